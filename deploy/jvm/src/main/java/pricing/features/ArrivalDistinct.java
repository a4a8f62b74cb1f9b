package pricing.features;

import java.util.HashSet;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Arrival mode: number of distinct non-null keys, among the rows accumulated so far, whose event time lies
 * in [t - window, t] (t: the event time of the row accumulated last). Window semantics and eviction as in
 * {@link ArrivalCount}. The answer scans the window's entries: meant for small windows (a user's views
 * in 30 minutes).
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = ArrivalDistinct.Acc.class),
        output = @DataTypeHint("BIGINT"))
public class ArrivalDistinct extends AggregateFunction<Long, ArrivalDistinct.Acc> {

    /** The sorted entries with their keys, and the window length. */
    public static class Acc extends TimeSortedBuffer {
        public long window;

        public Acc() {
            strings = new String[8];
        }
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, String key, Long windowMs, Long allowanceMs) {
        if (eventTime == null) {
            return;
        }
        acc.window = windowMs;
        acc.see(eventTime);
        if (key != null) {
            int p = acc.insert(eventTime); // (insert may replace the arrays)
            acc.strings[p] = key;
        }
        acc.dropHead(acc.countBefore(acc.horizon(windowMs, allowanceMs)));
    }

    @Override
    public Long getValue(Acc acc) {
        HashSet<String> keys = new HashSet<>();
        for (int i = acc.lowerBound(acc.current - acc.window), to = acc.upperBound(acc.current); i < to; i++) {
            keys.add(acc.strings[i]);
        }
        return (long) keys.size();
    }
}
