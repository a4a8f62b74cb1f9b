package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Arrival mode: number of rows with a true flag, among the rows accumulated so far, whose event time lies in
 * [t - window, t], where t is the event time of the row accumulated last. A negative window means all
 * history: the rows with an event time at or before t.
 *
 * <p>Meant for a processing-time (arrival-order) {@code ROWS} OVER window: rows come in any event-time
 * order, so a row with a later event time that arrived earlier is not counted (no future leakage).
 * Entries are kept in keyed state, sorted by event time ({@link ArrivalQueue}: a row reads O(1) amortised
 * entries, whatever the window holds); those older than the newest event time seen minus the window minus
 * {@code allowanceMs} leave (for all history, into a running count). A row further behind its key's newest
 * row than {@code allowanceMs} may miss entries that left.
 */
@FunctionHint(output = @DataTypeHint("BIGINT"))
public class ArrivalCount extends AggregateFunction<Long, ArrivalQueue> {

    private final int recentCap;
    private final long recentMs;

    public ArrivalCount() {
        this(ArrivalQueue.RECENT_CAP, ArrivalQueue.RECENT_MS);
    }

    /** With another number of entries kept in the accumulator (tests exercise every part with a small one). */
    public ArrivalCount(int recentCap, long recentMs) {
        this.recentCap = recentCap;
        this.recentMs = recentMs;
    }

    @Override
    public ArrivalQueue createAccumulator() {
        return new ArrivalQueue();
    }

    public void accumulate(ArrivalQueue acc, Long eventTime, Boolean flag, Long windowMs, Long allowanceMs)
            throws Exception {
        if (eventTime == null) {
            return;
        }
        acc.add(eventTime, Boolean.TRUE.equals(flag), 0.0, windowMs, allowanceMs, recentCap, recentMs, false);
    }

    @Override
    public Long getValue(ArrivalQueue acc) {
        return acc.count;
    }
}
