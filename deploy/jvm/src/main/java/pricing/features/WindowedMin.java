package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Minimum of the non-null values whose event time lies in [t - window, t] (see {@link WindowedSum}
 * for the window semantics); null when there is none. A monotonic deque: O(1) amortised per row.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = WindowedMin.Acc.class),
        output = @DataTypeHint("BIGINT"))
public class WindowedMin extends AggregateFunction<Long, WindowedMin.Acc> {

    /** Candidates for the minimum: times and values, values increasing from head to tail. */
    public static class Acc {
        public LongDeque times = new LongDeque();
        public LongDeque values = new LongDeque();
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, Long value, Long windowMs) {
        if (eventTime == null) {
            return;
        }
        if (value != null) {
            while (!acc.values.isEmpty() && acc.values.last() >= value) {
                acc.values.removeLast();
                acc.times.removeLast();
            }
            acc.times.addLast(eventTime);
            acc.values.addLast(value);
        }
        for (int n = acc.times.removeBefore(eventTime - windowMs); n > 0; n--) {
            acc.values.removeFirst();
        }
    }

    @Override
    public Long getValue(Acc acc) {
        return acc.values.isEmpty() ? null : acc.values.first();
    }
}
