package pricing.features;

import java.util.Arrays;

import org.apache.flink.table.api.dataview.MapView;

/**
 * Arrival mode's entries for counts and sums ({@link ArrivalCount}, {@link ArrivalSum}) in keyed state, so that
 * what a row reads does not grow with what its key's window holds (the {@link TimeSortedBuffer} these functions
 * kept before was one value, deserialised whole on every row under RocksDB: a popular product got slower as it
 * sold more). Rows come in arrival order, with event times out of order by up to the allowance. The entries are
 * in three parts, each sorted by event time (ties in arrival order) and counted on its own:
 *
 * <ul>
 *   <li><b>recent</b>: entries at or after the settled tail's time, kept in the accumulator (sorted insertion):
 *       at most {@code recentCap}, or more if they are all within {@code recentMs} of the newest event time. A
 *       key whose window holds no more never touches keyed state: one value read and written per row, as the
 *       sorted buffer was;
 *   <li><b>settled</b>: the rest of the window, a queue in {@link MapView}s (entry {@code n} at {@code times[n]},
 *       the running sum through it at {@code prefix[n]}), entries {@code head} to {@code tail - 1}. Entries join at
 *       the tail only (the oldest recent ones, beyond {@code recentCap} and older than {@code recentMs}), and
 *       leave from the head;
 *   <li><b>late</b>: entries that arrive behind the settled tail's time (an input behind another by more than
 *       {@code recentMs}, as during a catch-up), kept in the accumulator until they leave.
 * </ul>
 *
 * <p>A row's window [from, to] in the settled part is found by galloping from the previous row's ends
 * ({@code lo}, {@code hi}): O(1) amortised reads for rows near each other in time, O(log d) for a row d entries
 * away; the count is the difference of the two indexes and the sum the difference of two running sums. The
 * accumulator's own fields (what the state backend deserialises on every row) are a few numbers, the recent
 * entries (at most {@code recentCap}, or {@code recentMs} of the key's traffic) and the late ones (normally none).
 *
 * <p>Entries leave once older than the newest event time minus the window minus the allowance (all history, a
 * negative window: into a running count and sum); an entry that arrives already older is still counted until
 * it leaves. Sums over the settled part are differences of running sums: their rounding error is relative to
 * the running sum since the queue was last empty, not to the window's sum.
 */
public class ArrivalQueue {
    /** How many of the newest entries stay in the accumulator (the recent part) before the oldest settle... */
    public static final int RECENT_CAP = 64;
    /** ... and how far behind the newest event time they must be to settle: the inputs' usual spread. */
    public static final long RECENT_MS = 5_000;

    public MapView<Long, Long> times = new MapView<>();
    public MapView<Long, Double> prefix = new MapView<>();
    public long head;
    public long tail;
    public long headTime;
    public long tailTime = Long.MIN_VALUE;
    /** The running sum through entry {@code head - 1} and through {@code tail - 1}. */
    public double headPrefix;
    public double tailPrefix;
    /** The settled indexes of the last row's window, [lo, hi): where the next row's search starts. */
    public long lo;
    public long hi;
    public long[] recentTimes = new long[0];
    public double[] recentValues = new double[0];
    public long[] lateTimes = new long[0];
    public double[] lateValues = new double[0];
    public long newest = Long.MIN_VALUE;
    /** All history (negative window): the entries that left, and their sum. */
    public long baseCount;
    public double baseSum;
    /** The latest row's window: its count and sum. */
    public long count;
    public double sum;

    /** How many entries are kept, in all three parts. */
    public long size() {
        return (tail - head) + recentTimes.length + lateTimes.length;
    }

    /**
     * Records a row at {@code eventTime} (with an entry of {@code value} when {@code hasEntry}), drops what no
     * row within the allowance needs, and computes the row's window [eventTime - windowMs, eventTime]
     * (negative window: all history up to eventTime) into {@link #count} and, with {@code sums}, {@link #sum}.
     */
    void add(long eventTime, boolean hasEntry, double value, long windowMs, long allowanceMs, int recentCap,
            long recentMs, boolean sums) throws Exception {
        newest = Math.max(newest, eventTime);
        if (hasEntry) {
            if (eventTime >= tailTime) {
                int p = upper(recentTimes, eventTime);
                recentTimes = inserted(recentTimes, p, eventTime);
                recentValues = sums ? inserted(recentValues, p, value) : recentValues;
            } else {
                int p = upper(lateTimes, eventTime);
                lateTimes = inserted(lateTimes, p, eventTime);
                lateValues = sums ? inserted(lateValues, p, value) : lateValues;
            }
        }
        long horizon = newest - Math.max(windowMs, 0) - allowanceMs;
        boolean all = windowMs < 0;
        while (tail > head && headTime < horizon) {
            popHead(all, sums);
        }
        // the oldest of the accumulator's entries leave: those behind the horizon; then, beyond recentCap, those
        // older than recentMs settle (a key whose window holds few entries never touches keyed state: one value per
        // row, as before; an input less than recentMs behind another never makes late entries)
        int gone = lower(recentTimes, horizon);
        if (all && gone > 0) {
            baseCount += gone;
            baseSum += sums ? sum(recentValues, 0, gone) : 0.0;
        }
        int n = Math.max(gone, Math.min(recentTimes.length - recentCap, lower(recentTimes, newest - recentMs)));
        for (int i = gone; i < n; i++) {
            append(recentTimes[i], sums ? recentValues[i] : 0.0, sums);
        }
        if (n > 0) {
            recentTimes = Arrays.copyOfRange(recentTimes, n, recentTimes.length);
            recentValues = sums ? Arrays.copyOfRange(recentValues, n, recentValues.length) : recentValues;
        }
        int late = lower(lateTimes, horizon);
        if (late > 0) {
            if (all) {
                baseCount += late;
                baseSum += sums ? sum(lateValues, 0, late) : 0.0;
            }
            lateTimes = Arrays.copyOfRange(lateTimes, late, lateTimes.length);
            lateValues = sums ? Arrays.copyOfRange(lateValues, late, lateValues.length) : lateValues;
        }
        long from = all ? Long.MIN_VALUE : eventTime - windowMs;
        long a = all ? head : seek(lo, from, false);
        long b = seek(Math.max(hi, a), eventTime, true);
        lo = a;
        hi = b;
        int r0 = lower(recentTimes, from);
        int r1 = upper(recentTimes, eventTime);
        int l0 = lower(lateTimes, from);
        int l1 = upper(lateTimes, eventTime);
        count = (b - a) + (r1 - r0) + (l1 - l0) + (all ? baseCount : 0);
        if (sums) {
            sum = prefixBefore(b) - prefixBefore(a) + sum(recentValues, r0, r1) + sum(lateValues, l0, l1)
                    + (all ? baseSum : 0.0);
        }
    }

    private void append(long time, double value, boolean sums) throws Exception {
        times.put(tail, time);
        if (sums) {
            tailPrefix += value;
            prefix.put(tail, tailPrefix);
        }
        if (tail == head) {
            headTime = time;
        }
        tailTime = time;
        tail++;
    }

    private void popHead(boolean all, boolean sums) throws Exception {
        if (sums) {
            double through = head == tail - 1 ? tailPrefix : prefix.get(head);
            if (all) {
                baseSum += through - headPrefix;
            }
            headPrefix = through;
            prefix.remove(head);
        }
        if (all) {
            baseCount++;
        }
        times.remove(head);
        head++;
        if (head < tail) {
            headTime = head == tail - 1 ? tailTime : times.get(head); // not time(head): that answers the cached headTime
        } else {
            headPrefix = 0.0; // empty: start the running sums again (no rounding carried over)
            tailPrefix = 0.0;
        }
    }

    private long time(long k) throws Exception {
        if (k == head) {
            return headTime;
        }
        if (k == tail - 1) {
            return tailTime;
        }
        return times.get(k);
    }

    private double prefixBefore(long k) throws Exception {
        if (k == head) {
            return headPrefix;
        }
        if (k == tail) {
            return tailPrefix;
        }
        return prefix.get(k - 1);
    }

    private boolean past(long k, long x, boolean strict) throws Exception {
        long t = time(k);
        return strict ? t > x : t >= x;
    }

    /**
     * The first settled index k in [head, tail] with time(k) >= x ({@code strict}: > x), or tail: galloping from
     * {@code start}, then a binary search over the last gallop's step.
     */
    private long seek(long start, long x, boolean strict) throws Exception {
        long k = Math.min(Math.max(start, head), tail);
        long from;
        long to; // the answer is in [from, to], and to == tail or past(to)
        if (k < tail && !past(k, x, strict)) {
            long known = k;
            long step = 1;
            while (true) {
                long probe = known + step;
                if (probe >= tail) {
                    from = known + 1;
                    to = tail;
                    break;
                }
                if (past(probe, x, strict)) {
                    from = known + 1;
                    to = probe;
                    break;
                }
                known = probe;
                step <<= 1;
            }
        } else {
            long known = k;
            long step = 1;
            while (true) {
                long probe = known - step;
                if (probe < head) {
                    from = head;
                    to = known;
                    break;
                }
                if (!past(probe, x, strict)) {
                    from = probe + 1;
                    to = known;
                    break;
                }
                known = probe;
                step <<= 1;
            }
        }
        while (from < to) {
            long mid = (from + to) >>> 1;
            if (past(mid, x, strict)) {
                to = mid;
            } else {
                from = mid + 1;
            }
        }
        return from;
    }

    /** The first index of sorted {@code a} whose time is at or after {@code time}. */
    static int lower(long[] a, long time) {
        int lo = 0;
        int hi = a.length;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (a[mid] < time) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }

    /** The first index of sorted {@code a} whose time is after {@code time}. */
    static int upper(long[] a, long time) {
        return time == Long.MAX_VALUE ? a.length : lower(a, time + 1);
    }

    /** {@code a} with {@code v} inserted at index {@code p}. */
    static long[] inserted(long[] a, int p, long v) {
        long[] out = new long[a.length + 1];
        System.arraycopy(a, 0, out, 0, p);
        out[p] = v;
        System.arraycopy(a, p, out, p + 1, a.length - p);
        return out;
    }

    private static double[] inserted(double[] a, int p, double v) {
        double[] out = new double[a.length + 1];
        System.arraycopy(a, 0, out, 0, p);
        out[p] = v;
        System.arraycopy(a, p, out, p + 1, a.length - p);
        return out;
    }

    private static double sum(double[] a, int from, int to) {
        double s = 0.0;
        for (int i = from; i < to; i++) {
            s += a[i];
        }
        return s;
    }
}
