package pricing.features;

import java.util.HashMap;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Arrival mode: how many earlier-arrived rows carry the current row's key with an event time within
 * {@code window} of the current row's, before or after it: 0 for the first copy to arrive. The job uses
 * it to find repeated price requests (same request_id) without waiting for the watermark: the first copy
 * to arrive is priced, whatever the copies' event times.
 *
 * <p>Meant for a processing-time {@code ROWS} frame. Entries older than the newest event time seen minus
 * the window minus {@code allowanceMs} leave.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = ArrivalRepeats.Acc.class),
        output = @DataTypeHint("BIGINT"))
public class ArrivalRepeats extends AggregateFunction<Long, ArrivalRepeats.Acc> {

    /** The sorted entries with their keys, each key's entry times, and the answer for the last row. */
    public static class Acc extends TimeSortedBuffer {
        public HashMap<String, long[]> copies = new HashMap<>();
        public long before;

        public Acc() {
            strings = new String[8];
        }
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, String key, Long windowMs, Long allowanceMs) {
        if (eventTime == null) {
            return;
        }
        acc.see(eventTime);
        int n = acc.countBefore(acc.horizon(windowMs, allowanceMs));
        for (int i = acc.head; i < acc.head + n; i++) {
            forget(acc, acc.strings[i], acc.times[i]);
        }
        acc.dropHead(n);
        acc.before = 0;
        if (key == null) {
            return;
        }
        long[] times = acc.copies.get(key);
        long[] grown;
        if (times == null) {
            grown = new long[1];
        } else {
            for (long t : times) {
                if (Math.abs(t - eventTime) <= windowMs) {
                    acc.before++;
                }
            }
            grown = java.util.Arrays.copyOf(times, times.length + 1);
        }
        grown[grown.length - 1] = eventTime;
        acc.copies.put(key, grown);
        int p = acc.insert(eventTime); // (insert may replace the arrays)
        acc.strings[p] = key;
    }

    private static void forget(Acc acc, String key, long time) {
        long[] times = acc.copies.get(key);
        if (times == null) {
            return;
        }
        if (times.length == 1) {
            acc.copies.remove(key);
            return;
        }
        long[] rest = new long[times.length - 1];
        for (int i = 0, j = 0, skipped = 0; i < times.length; i++) {
            if (skipped == 0 && times[i] == time) {
                skipped = 1;
            } else if (j < rest.length) {
                rest[j++] = times[i];
            }
        }
        acc.copies.put(key, rest);
    }

    @Override
    public Long getValue(Acc acc) {
        return acc.before;
    }
}
