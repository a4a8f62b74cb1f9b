package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Arrival mode: minimum of the non-null values, among the rows accumulated so far, whose event time lies in
 * [t - window, t] (t: the event time of the row accumulated last); null when there is none. Window
 * semantics and eviction as in {@link ArrivalCount}. The answer scans the window's entries: meant for
 * sparse values (competitor prices).
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = ArrivalMin.Acc.class),
        output = @DataTypeHint("BIGINT"))
public class ArrivalMin extends AggregateFunction<Long, ArrivalMin.Acc> {

    /** The sorted entries with their values, and the window length. */
    public static class Acc extends TimeSortedBuffer {
        public long window;

        public Acc() {
            longs = new long[8];
        }
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, Long value, Long windowMs, Long allowanceMs) {
        if (eventTime == null) {
            return;
        }
        acc.window = windowMs;
        acc.see(eventTime);
        if (value != null) {
            int p = acc.insert(eventTime); // (insert may replace the arrays)
            acc.longs[p] = value;
        }
        acc.dropHead(acc.countBefore(acc.horizon(windowMs, allowanceMs)));
    }

    @Override
    public Long getValue(Acc acc) {
        Long min = null;
        for (int i = acc.lowerBound(acc.current - acc.window), to = acc.upperBound(acc.current); i < to; i++) {
            if (min == null || acc.longs[i] < min) {
                min = acc.longs[i];
            }
        }
        return min;
    }
}
