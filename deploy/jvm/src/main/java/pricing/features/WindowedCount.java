package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Number of rows with a true flag whose event time lies in [t - window, t] (see {@link WindowedSum}
 * for the window semantics). Keeps only the times, in keyed state ({@link TimeQueue}).
 */
@FunctionHint(output = @DataTypeHint("BIGINT"))
public class WindowedCount extends AggregateFunction<Long, TimeQueue> {

    @Override
    public TimeQueue createAccumulator() {
        return new TimeQueue();
    }

    public void accumulate(TimeQueue times, Long eventTime, Boolean flag, Long windowMs) throws Exception {
        if (eventTime == null) {
            return;
        }
        if (Boolean.TRUE.equals(flag)) {
            times.push(eventTime);
        }
        while (times.headBefore(eventTime - windowMs)) {
            times.pop();
        }
    }

    @Override
    public Long getValue(TimeQueue times) {
        return times.size();
    }
}
