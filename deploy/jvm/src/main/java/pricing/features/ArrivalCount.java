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
 * Entries are kept sorted by event time (see {@link TimeSortedBuffer}); those older than the newest
 * event time seen minus the window minus {@code allowanceMs} leave (for all history, into a running
 * count). A row further behind its key's newest row than {@code allowanceMs} may miss entries that left.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = ArrivalCount.Acc.class),
        output = @DataTypeHint("BIGINT"))
public class ArrivalCount extends AggregateFunction<Long, ArrivalCount.Acc> {

    /** The sorted entries, the window length, and (all history) how many entries left. */
    public static class Acc extends TimeSortedBuffer {
        public long window;
        public long base;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, Boolean flag, Long windowMs, Long allowanceMs) {
        if (eventTime == null) {
            return;
        }
        acc.window = windowMs;
        acc.see(eventTime);
        if (Boolean.TRUE.equals(flag)) {
            acc.insert(eventTime);
        }
        int n = acc.countBefore(acc.horizon(windowMs, allowanceMs));
        if (windowMs < 0) {
            acc.base += n;
        }
        acc.dropHead(n);
    }

    @Override
    public Long getValue(Acc acc) {
        int upTo = acc.upperBound(acc.current);
        if (acc.window < 0) {
            return acc.base + (upTo - acc.head);
        }
        return (long) (upTo - acc.lowerBound(acc.current - acc.window));
    }
}
