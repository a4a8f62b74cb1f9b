package pricing.features;

/**
 * Entries sorted by event time, ties in arrival order, for rows that reach an operator out of event-time
 * order (the arrival-mode window functions, {@code pricing.features.Arrival*}).
 *
 * <p>Each entry has a time and, as its owner needs, a long, a double or a string. New entries are
 * inserted where their time belongs by a scan from the tail, so a row that is at most k entries out
 * of order costs O(k); old entries leave from the head. {@link #newest} is the newest event time of
 * any row the owner saw (with or without an entry), {@link #current} the time of the row it saw
 * last: the time its window ends at.
 *
 * <p>Fields are public and the class has a no-argument constructor: Flink stores it as a RAW value
 * (Kryo).
 */
public class TimeSortedBuffer {
    public long[] times = new long[8];
    public long[] longs;
    public double[] doubles;
    public String[] strings;
    /** Live entries are at indexes [head, end). */
    public int head;
    public int end;
    public long newest = Long.MIN_VALUE;
    public long current;

    public TimeSortedBuffer() {}

    public static TimeSortedBuffer withLongs() {
        TimeSortedBuffer b = new TimeSortedBuffer();
        b.longs = new long[8];
        return b;
    }

    public static TimeSortedBuffer withDoubles() {
        TimeSortedBuffer b = new TimeSortedBuffer();
        b.doubles = new double[8];
        return b;
    }

    public static TimeSortedBuffer withStrings() {
        TimeSortedBuffer b = new TimeSortedBuffer();
        b.strings = new String[8];
        return b;
    }

    public int size() {
        return end - head;
    }

    /** Records that a row with this event time arrived: it is now the window's end, and maybe the newest. */
    public void see(long eventTime) {
        current = eventTime;
        if (eventTime > newest) {
            newest = eventTime;
        }
    }

    /** Inserts an entry after every entry with a time at or before {@code time}; returns its index. */
    public int insert(long time) {
        if (end == times.length) {
            makeRoom();
        }
        int p = end;
        while (p > head && times[p - 1] > time) {
            p--;
        }
        int n = end - p;
        if (n > 0) {
            System.arraycopy(times, p, times, p + 1, n);
            if (longs != null) {
                System.arraycopy(longs, p, longs, p + 1, n);
            }
            if (doubles != null) {
                System.arraycopy(doubles, p, doubles, p + 1, n);
            }
            if (strings != null) {
                System.arraycopy(strings, p, strings, p + 1, n);
            }
        }
        times[p] = time;
        end++;
        return p;
    }

    /** Compacts to index 0 when the head has moved a quarter of the way, otherwise doubles the arrays. */
    private void makeRoom() {
        int n = size();
        int capacity = head >= times.length / 4 ? times.length : times.length * 2;
        times = move(times, capacity, n);
        if (longs != null) {
            longs = move(longs, capacity, n);
        }
        if (doubles != null) {
            doubles = move(doubles, capacity, n);
        }
        if (strings != null) {
            String[] s = new String[capacity];
            System.arraycopy(strings, head, s, 0, n);
            strings = s;
        }
        shifted(head);
        head = 0;
        end = n;
    }

    /** Called after the live entries moved {@code by} indexes towards 0 (owners with indexes of their own adjust them). */
    protected void shifted(int by) {}

    private long[] move(long[] a, int capacity, int n) {
        long[] b = capacity == a.length ? a : new long[capacity];
        System.arraycopy(a, head, b, 0, n);
        return b;
    }

    private double[] move(double[] a, int capacity, int n) {
        double[] b = capacity == a.length ? a : new double[capacity];
        System.arraycopy(a, head, b, 0, n);
        return b;
    }

    /** The first index whose time is at or after {@code time} ({@code end} if none). */
    public int lowerBound(long time) {
        int lo = head;
        int hi = end;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (times[mid] < time) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }

    /** The first index whose time is after {@code time} ({@code end} if none). */
    public int upperBound(long time) {
        int lo = head;
        int hi = end;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (times[mid] <= time) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }

    /** How many head entries have a time before {@code from} (the ones an eviction at {@code from} drops). */
    public int countBefore(long from) {
        int n = 0;
        while (head + n < end && times[head + n] < from) {
            n++;
        }
        return n;
    }

    /** Drops {@code n} entries from the head. */
    public void dropHead(int n) {
        if (strings != null) {
            for (int i = head; i < head + n; i++) {
                strings[i] = null;
            }
        }
        head += n;
        if (head == end) {
            head = 0;
            end = 0;
        }
    }

    /**
     * Where entries stop being needed: a window of {@code windowMs} (negative: all history) at any row at most
     * {@code allowanceMs} behind the newest row starts at or after this time.
     */
    public long horizon(long windowMs, long allowanceMs) {
        if (newest == Long.MIN_VALUE) {
            return Long.MIN_VALUE;
        }
        long span = (windowMs < 0 ? 0 : windowMs) + allowanceMs;
        return newest - span;
    }
}
