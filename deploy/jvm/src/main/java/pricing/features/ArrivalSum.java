package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Arrival mode: sum of the non-null values, among the rows accumulated so far, whose event time lies in
 * [t - window, t] (t: the event time of the row accumulated last; a negative window: all history up to t).
 * Window semantics and eviction as in {@link ArrivalCount}.
 *
 * <p>The sum of the entries between two indexes is kept and its ends are moved to each new window, so a
 * row whose time is near the previous row's costs O(1) amortised, in any order.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = ArrivalSum.Acc.class),
        output = @DataTypeHint("DOUBLE"))
public class ArrivalSum extends AggregateFunction<Double, ArrivalSum.Acc> {

    /** The sorted entries; [lo, hi) are the last window's, {@code sum} their sum; {@code base}: what left (all history). */
    public static class Acc extends TimeSortedBuffer {
        public long window;
        public double base;
        public int lo;
        public int hi;
        public double sum;

        public Acc() {
            doubles = new double[8];
        }

        @Override
        protected void shifted(int by) {
            lo -= by;
            hi -= by;
        }
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, Double value, Long windowMs, Long allowanceMs) {
        if (eventTime == null) {
            return;
        }
        acc.window = windowMs;
        acc.see(eventTime);
        if (value != null) {
            int p = acc.insert(eventTime);
            acc.doubles[p] = value;
            if (p < acc.lo) {
                acc.lo++;
                acc.hi++;
            } else if (p < acc.hi) {
                acc.hi++;
                acc.sum += value; // inside the range, or at its start (then the moves below may take it out)
            }
        }
        evict(acc, acc.countBefore(acc.horizon(windowMs, allowanceMs)));
        moveTo(acc, windowMs < 0 ? Long.MIN_VALUE : eventTime - windowMs, eventTime);
    }

    private static void evict(Acc acc, int n) {
        if (n == 0) {
            return;
        }
        int newHead = acc.head + n;
        for (int i = acc.head; i < newHead; i++) {
            if (acc.window < 0) {
                acc.base += acc.doubles[i];
            }
            if (i >= acc.lo && i < acc.hi) {
                acc.sum -= acc.doubles[i];
            }
        }
        acc.lo = Math.max(acc.lo, newHead);
        acc.hi = Math.max(acc.hi, acc.lo);
        acc.dropHead(n);
        if (acc.size() == 0) {
            acc.lo = 0;
            acc.hi = 0;
        }
    }

    /** Moves [lo, hi) to the entries with from <= time <= to, updating the sum. */
    private static void moveTo(Acc acc, long from, long to) {
        double[] v = acc.doubles;
        long[] t = acc.times;
        while (acc.lo < acc.end && t[acc.lo] < from) {
            if (acc.lo < acc.hi) {
                acc.sum -= v[acc.lo];
            } else {
                acc.hi = acc.lo + 1;
            }
            acc.lo++;
        }
        while (acc.lo > acc.head && t[acc.lo - 1] >= from) {
            acc.lo--;
            acc.sum += v[acc.lo];
        }
        while (acc.hi > acc.lo && t[acc.hi - 1] > to) {
            acc.hi--;
            acc.sum -= v[acc.hi];
        }
        while (acc.hi < acc.end && t[acc.hi] <= to) {
            acc.sum += v[acc.hi];
            acc.hi++;
        }
        if (acc.lo == acc.hi) {
            acc.sum = 0.0; // no drift from adding and removing
        }
    }

    @Override
    public Double getValue(Acc acc) {
        return (acc.window < 0 ? acc.base : 0.0) + acc.sum;
    }
}
