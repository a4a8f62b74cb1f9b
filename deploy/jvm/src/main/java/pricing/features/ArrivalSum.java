package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Arrival mode: sum of the non-null values, among the rows accumulated so far, whose event time lies in
 * [t - window, t] (t: the event time of the row accumulated last; a negative window: all history up to t).
 * Window semantics, state and eviction as in {@link ArrivalCount} ({@link ArrivalQueue}); the sum of the
 * settled entries is the difference of two running sums, so a row reads O(1) amortised entries.
 */
@FunctionHint(output = @DataTypeHint("DOUBLE"))
public class ArrivalSum extends AggregateFunction<Double, ArrivalQueue> {

    private final int recentCap;
    private final long recentMs;

    public ArrivalSum() {
        this(ArrivalQueue.RECENT_CAP, ArrivalQueue.RECENT_MS);
    }

    /** With another number of entries kept in the accumulator (tests exercise every part with a small one). */
    public ArrivalSum(int recentCap, long recentMs) {
        this.recentCap = recentCap;
        this.recentMs = recentMs;
    }

    @Override
    public ArrivalQueue createAccumulator() {
        return new ArrivalQueue();
    }

    public void accumulate(ArrivalQueue acc, Long eventTime, Double value, Long windowMs, Long allowanceMs)
            throws Exception {
        if (eventTime == null) {
            return;
        }
        acc.add(eventTime, value != null, value == null ? 0.0 : value, windowMs, allowanceMs, recentCap, recentMs, true);
    }

    @Override
    public Double getValue(ArrivalQueue acc) {
        return acc.count == 0 ? 0.0 : acc.sum;
    }
}
