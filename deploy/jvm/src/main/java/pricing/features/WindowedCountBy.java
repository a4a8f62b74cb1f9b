package pricing.features;

import java.util.HashMap;
import java.util.Map;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Per group, the number of rows with a true flag and that group whose event time lies in [t - window, t]
 * (see {@link WindowedSum} for the window semantics): a key's window split by a second key, without a
 * stage (and keyed state) per pair. The user stage counts a user's views of each product this way.
 *
 * <p>The result is a map from group to count holding the groups of the rows accumulated at the latest
 * row's timestamp (0 for a group with nothing in the window): an event-time OVER window accumulates every
 * row of a timestamp before it emits any, and all of them get one value, so each row looks up its own
 * group in it ({@code counts[product_id]}). Usually one entry.
 *
 * <p>State: the window's flagged entries as a queue (time and group per entry, {@link TimeQueue}) and a
 * count per group with entries in the window; a group's count is removed when its last entry leaves, so
 * the state holds no more groups than the window has entries, and a pair that is no longer active costs
 * nothing (a stage keyed by the pair kept every pair's key and bookkeeping until the state TTL). Per row:
 * O(1) amortised reads of keyed state, whatever the window holds.
 */
@FunctionHint(output = @DataTypeHint("MAP<STRING, BIGINT>"))
public class WindowedCountBy extends AggregateFunction<Map<String, Long>, WindowedCountBy.Acc> {

    /** The window's flagged entries (times in the queue, groups beside them), the counts, the groups at the latest time. */
    public static class Acc extends TimeQueue {
        public MapView<Long, String> groups = new MapView<>();
        public MapView<String, Long> counts = new MapView<>();
        public long touchedTime = Long.MIN_VALUE;
        public String[] touched = new String[0];
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, String group, Boolean flag, Long windowMs) throws Exception {
        if (eventTime == null) {
            return;
        }
        if (eventTime != acc.touchedTime) {
            acc.touchedTime = eventTime;
            acc.touched = new String[0];
        }
        if (group != null) {
            acc.touched = with(acc.touched, group);
            if (Boolean.TRUE.equals(flag)) {
                acc.groups.put(acc.push(eventTime), group);
                Long n = acc.counts.get(group);
                acc.counts.put(group, n == null ? 1L : n + 1);
            }
        }
        while (acc.headBefore(eventTime - windowMs)) {
            long seq = acc.pop();
            String left = acc.groups.get(seq);
            acc.groups.remove(seq);
            long n = acc.counts.get(left) - 1;
            if (n == 0) {
                acc.counts.remove(left);
            } else {
                acc.counts.put(left, n);
            }
        }
    }

    /** {@code groups} with {@code group} appended, unless it is there already. */
    static String[] with(String[] groups, String group) {
        for (String g : groups) {
            if (g.equals(group)) {
                return groups;
            }
        }
        String[] out = java.util.Arrays.copyOf(groups, groups.length + 1);
        out[groups.length] = group;
        return out;
    }

    @Override
    public Map<String, Long> getValue(Acc acc) {
        Map<String, Long> out = new HashMap<>();
        try {
            for (String g : acc.touched) {
                Long n = acc.counts.get(g);
                out.put(g, n == null ? 0L : n);
            }
        } catch (Exception e) {
            throw new IllegalStateException("reading the window's counts", e);
        }
        return out;
    }
}
