package pricing.features;

import java.util.ArrayDeque;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Sum of the non-null values whose event time lies in [t - window, t], where t is the event time
 * of the latest row accumulated.
 *
 * <p>Meant for an unbounded event-time OVER window: Flink feeds rows in event-time order and
 * accumulates every row of a timestamp before it emits any, so each row sees the window ending at
 * its own time, peers included. Old entries leave from the head of a deque: O(1) amortised per
 * row, where Flink's bounded RANGE window scans its whole buffer on every new timestamp.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = WindowedSum.Acc.class),
        output = @DataTypeHint("DOUBLE"))
public class WindowedSum extends AggregateFunction<Double, WindowedSum.Acc> {

    /** Entries of the window in event-time order, and their running sum. */
    public static class Acc {
        public LongDeque times = new LongDeque();
        public ArrayDeque<Double> values = new ArrayDeque<>();
        public double sum;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, Double value, Long windowMs) {
        if (eventTime == null) {
            return;
        }
        if (value != null) {
            acc.times.addLast(eventTime);
            acc.values.addLast(value);
            acc.sum += value;
        }
        for (int n = acc.times.removeBefore(eventTime - windowMs); n > 0; n--) {
            acc.sum -= acc.values.removeFirst();
        }
        if (acc.times.isEmpty()) {
            acc.sum = 0.0; // no drift from adding and removing
        }
    }

    @Override
    public Double getValue(Acc acc) {
        return acc.sum;
    }
}
