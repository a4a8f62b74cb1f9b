package pricing.features;

import org.apache.flink.table.api.dataview.MapView;

/**
 * The entries of an event-time window as a queue in keyed state: entry {@code n} of the key's
 * stream is at {@code times[n]} (and at {@code n} in the subclasses' value views), the window holds
 * the entries {@code head} to {@code tail - 1}.
 *
 * <p>Flink backs a {@link MapView} field of an accumulator with a {@code MapState} in the OVER
 * operators, so a row reads and writes only the entries it adds or evicts: O(1) amortised per row
 * whatever the window holds. The accumulator itself (this object's longs and the subclasses'
 * aggregates) is what the state backend deserialises on every row: a few numbers. A window kept as
 * a whole deque in the accumulator costs a deserialisation of the entire window per row under
 * RocksDB, so a product got slower the more it sold. The head's time is cached, so a row that
 * evicts nothing reads no entry at all.
 *
 * <p>Fields are public for Flink's structured-type extraction; the subclasses keep their values
 * under the same sequence numbers.
 */
public class TimeQueue {
    public MapView<Long, Long> times = new MapView<>();
    public long head;
    public long tail;
    public long headTime;

    public long size() {
        return tail - head;
    }

    /** Appends an entry at {@code time} (not before the last one) and returns its sequence number. */
    public long push(long time) throws Exception {
        times.put(tail, time);
        if (tail == head) {
            headTime = time;
        }
        return tail++;
    }

    /** Whether the oldest entry lies before {@code from} (and must be evicted). */
    public boolean headBefore(long from) {
        return tail > head && headTime < from;
    }

    /** Removes the oldest entry and returns its sequence number (for the subclasses' values). */
    public long pop() throws Exception {
        long seq = head;
        times.remove(seq);
        head++;
        if (tail > head) {
            headTime = times.get(head);
        }
        return seq;
    }

    /** Removes the newest entry and returns its sequence number (a monotonic deque's pop from the back). */
    public long popLast() throws Exception {
        long seq = --tail;
        times.remove(seq);
        return seq;
    }
}
