package pricing.features;

import java.util.ArrayDeque;
import java.util.HashMap;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Number of distinct non-null keys among the rows whose event time lies in [t - window, t] (see
 * {@link WindowedSum} for the window semantics).
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = WindowedDistinct.Acc.class),
        output = @DataTypeHint("BIGINT"))
public class WindowedDistinct extends AggregateFunction<Long, WindowedDistinct.Acc> {

    /** The window's entries in event-time order, and how often each key occurs in it. */
    public static class Acc {
        public LongDeque times = new LongDeque();
        public ArrayDeque<String> keys = new ArrayDeque<>();
        public HashMap<String, Integer> counts = new HashMap<>();

        void add(long eventTime, String key) {
            times.addLast(eventTime);
            keys.addLast(key);
            counts.merge(key, 1, Integer::sum);
        }

        /** Drops the entries older than {@code from}. */
        void evictBefore(long from) {
            for (int n = times.removeBefore(from); n > 0; n--) {
                counts.compute(keys.removeFirst(), (k, c) -> c == 1 ? null : c - 1);
            }
        }
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, String key, Long windowMs) {
        if (eventTime == null) {
            return;
        }
        if (key != null) {
            acc.add(eventTime, key);
        }
        acc.evictBefore(eventTime - windowMs);
    }

    @Override
    public Long getValue(Acc acc) {
        return (long) acc.counts.size();
    }
}
