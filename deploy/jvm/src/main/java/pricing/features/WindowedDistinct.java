package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Number of distinct non-null keys among the rows whose event time lies in [t - window, t] (see
 * {@link WindowedSum} for the window semantics). Exact; the entries and the per-key counts are in
 * keyed state, so a row reads only the keys it adds and evicts.
 */
@FunctionHint(output = @DataTypeHint("BIGINT"))
public class WindowedDistinct extends AggregateFunction<Long, WindowedDistinct.Acc> {

    /** The window's entries (times in the queue, keys beside them), how often each key occurs, and how many keys. */
    public static class Acc extends TimeQueue {
        public MapView<Long, String> keys = new MapView<>();
        public MapView<String, Integer> counts = new MapView<>();
        public long distinct;

        void add(long eventTime, String key) throws Exception {
            keys.put(push(eventTime), key);
            Integer count = counts.get(key);
            if (count == null) {
                distinct++;
            }
            counts.put(key, count == null ? 1 : count + 1);
        }

        /** How often {@code key} occurs in the window. */
        int count(String key) throws Exception {
            Integer count = counts.get(key);
            return count == null ? 0 : count;
        }

        /** Drops the entries older than {@code from}. */
        void evictBefore(long from) throws Exception {
            while (headBefore(from)) {
                long seq = pop();
                String key = keys.get(seq);
                keys.remove(seq);
                int count = counts.get(key);
                if (count == 1) {
                    counts.remove(key);
                    distinct--;
                } else {
                    counts.put(key, count - 1);
                }
            }
        }
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, String key, Long windowMs) throws Exception {
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
        return acc.distinct;
    }
}
