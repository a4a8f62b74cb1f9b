package pricing.features;

/**
 * The accumulator of {@link ArrivalLastLong} and {@link ArrivalLastString}: entries sorted by event time
 * (ties in arrival order) and the latest entry that left, which stays the answer for any time after it
 * until a later entry replaces it.
 */
public class ArrivalLatest extends TimeSortedBuffer {
    public boolean hasBase;
    public long baseTime;
    public long baseLong;
    public String baseString;

    /** Records a row, adds its entry when it has one, and drops the entries the allowance no longer needs. */
    void add(long eventTime, boolean hasValue, long value, String string, long allowanceMs) {
        see(eventTime);
        if (hasValue) {
            int p = insert(eventTime);
            if (longs != null) {
                longs[p] = value;
            } else {
                strings[p] = string;
            }
        }
        int n = countBefore(horizon(0, allowanceMs));
        if (n > 0) {
            int last = head + n - 1;
            hasBase = true;
            baseTime = times[last];
            if (longs != null) {
                baseLong = longs[last];
            } else {
                baseString = strings[last];
            }
            dropHead(n);
        }
    }

    /** The index of the latest entry at or before the current row's time; -1: the base (if it is not after), -2: none. */
    int latest() {
        int i = upperBound(current) - 1;
        if (i >= head) {
            return i;
        }
        return hasBase && baseTime <= current ? -1 : -2;
    }
}
