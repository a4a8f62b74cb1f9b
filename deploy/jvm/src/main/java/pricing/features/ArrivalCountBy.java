package pricing.features;

import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Arrival mode's {@link WindowedCountBy}: among the rows accumulated so far, the number with a true flag and
 * the latest row's group whose event time lies in [t - window, t], where t is the latest row's event time
 * (see {@link ArrivalCount} for arrival mode's rules). The result maps that group to its count (empty for a
 * row without a group): a {@code ROWS} OVER window emits after every row, so each row gets its own.
 *
 * <p>State, all in {@link MapView}s (keyed state): per group, the sorted event times of its entries, one
 * value read and written only by the rows of that group; and every entry, in arrival order, in a queue
 * ({@link TimeQueue}) that evicts from its head the entries older than the newest event time seen minus
 * the window minus {@code allowanceMs}, removing a group's times when its last entry leaves. An entry
 * behind a newer one at the head waits for it (at most the rows' spread in event time, which the
 * allowance bounds); it can only be counted by a row whose window reaches it, where it belongs. A row
 * reads its own group's times: O(k) for a group with k entries in the window, never the whole key's.
 */
@FunctionHint(output = @DataTypeHint("MAP<STRING, BIGINT>"))
public class ArrivalCountBy extends AggregateFunction<Map<String, Long>, ArrivalCountBy.Acc> {

    /** Entries in arrival order (times in the queue, groups beside them), each group's sorted times, the latest row. */
    public static class Acc extends TimeQueue {
        public MapView<Long, String> groups = new MapView<>();
        public MapView<String, long[]> sorted = new MapView<>();
        public long newest = Long.MIN_VALUE;
        public long current;
        public long window;
        public String currentGroup;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, String group, Boolean flag, Long windowMs, Long allowanceMs)
            throws Exception {
        if (eventTime == null) {
            return;
        }
        if (windowMs < 0) {
            throw new IllegalArgumentException("arrival_count_by needs a window length, got " + windowMs);
        }
        acc.window = windowMs;
        acc.current = eventTime;
        acc.currentGroup = group;
        acc.newest = Math.max(acc.newest, eventTime);
        if (group != null && Boolean.TRUE.equals(flag)) {
            long[] times = acc.sorted.get(group);
            acc.sorted.put(group, inserted(times == null ? new long[0] : times, eventTime));
            acc.groups.put(acc.push(eventTime), group);
        }
        long horizon = acc.newest - windowMs - allowanceMs;
        while (acc.headBefore(horizon)) {
            long time = acc.headTime;
            long seq = acc.pop();
            String left = acc.groups.get(seq);
            acc.groups.remove(seq);
            long[] times = removed(acc.sorted.get(left), time);
            if (times.length == 0) {
                acc.sorted.remove(left);
            } else {
                acc.sorted.put(left, times);
            }
        }
    }

    /** {@code times} (sorted) with {@code time} inserted after its equals. */
    static long[] inserted(long[] times, long time) {
        return ArrivalQueue.inserted(times, ArrivalQueue.upper(times, time), time);
    }

    /** {@code times} (sorted) without one copy of {@code time}, which it holds. */
    static long[] removed(long[] times, long time) {
        int p = ArrivalQueue.lower(times, time);
        if (p == times.length || times[p] != time) {
            throw new IllegalStateException("entry at " + time + " is not among its group's times");
        }
        long[] out = Arrays.copyOf(times, times.length - 1);
        System.arraycopy(times, p + 1, out, p, times.length - p - 1);
        return out;
    }

    @Override
    public Map<String, Long> getValue(Acc acc) {
        Map<String, Long> out = new HashMap<>();
        if (acc.currentGroup == null) {
            return out;
        }
        long[] times;
        try {
            times = acc.sorted.get(acc.currentGroup);
        } catch (Exception e) {
            throw new IllegalStateException("reading the group's times", e);
        }
        long n = times == null ? 0 : ArrivalQueue.upper(times, acc.current) - ArrivalQueue.lower(times, acc.current - acc.window);
        out.put(acc.currentGroup, n);
        return out;
    }
}
