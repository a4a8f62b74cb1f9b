package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Number of rows with a true flag whose event time lies in [t - window, t] (see {@link WindowedSum}
 * for the window semantics). Keeps only the times, unboxed.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = LongDeque.class),
        output = @DataTypeHint("BIGINT"))
public class WindowedCount extends AggregateFunction<Long, LongDeque> {

    @Override
    public LongDeque createAccumulator() {
        return new LongDeque();
    }

    public void accumulate(LongDeque times, Long eventTime, Boolean flag, Long windowMs) {
        if (eventTime == null) {
            return;
        }
        if (Boolean.TRUE.equals(flag)) {
            times.addLast(eventTime);
        }
        times.removeBefore(eventTime - windowMs);
    }

    @Override
    public Long getValue(LongDeque times) {
        return (long) times.size;
    }
}
