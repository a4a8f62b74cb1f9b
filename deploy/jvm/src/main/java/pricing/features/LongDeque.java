package pricing.features;

/** A growable ring buffer of longs (times or values), without boxing. */
public class LongDeque {
    public long[] items = new long[8];
    public int head;
    public int size;

    public boolean isEmpty() {
        return size == 0;
    }

    public long first() {
        return items[head];
    }

    public long last() {
        return items[(head + size - 1) % items.length];
    }

    public void addLast(long value) {
        if (size == items.length) {
            long[] grown = new long[items.length * 2];
            for (int i = 0; i < size; i++) {
                grown[i] = items[(head + i) % items.length];
            }
            items = grown;
            head = 0;
        }
        items[(head + size) % items.length] = value;
        size++;
    }

    public long removeFirst() {
        long value = items[head];
        head = (head + 1) % items.length;
        size--;
        return value;
    }

    /** Removes the times before {@code from} from the head (a window's expired entries); returns how many. */
    public int removeBefore(long from) {
        int removed = 0;
        while (size > 0 && items[head] < from) {
            removeFirst();
            removed++;
        }
        return removed;
    }

    public long removeLast() {
        size--;
        return items[(head + size) % items.length];
    }
}
