package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Sum of the non-null values whose event time lies in [t - window, t], where t is the event time
 * of the latest row accumulated.
 *
 * <p>Meant for an unbounded event-time OVER window: Flink feeds rows in event-time order and
 * accumulates every row of a timestamp before it emits any, so each row sees the window ending at
 * its own time, peers included. Old entries leave from the head of a queue kept in keyed state
 * ({@link TimeQueue}): O(1) amortised per row, where Flink's bounded RANGE window scans its whole
 * buffer on every new timestamp.
 */
@FunctionHint(output = @DataTypeHint("DOUBLE"))
public class WindowedSum extends AggregateFunction<Double, WindowedSum.Acc> {

    /** The window's entries (times in the queue, values beside them) and their running sum. */
    public static class Acc extends TimeQueue {
        public MapView<Long, Double> values = new MapView<>();
        public double sum;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, Double value, Long windowMs) throws Exception {
        if (eventTime == null) {
            return;
        }
        if (value != null) {
            acc.values.put(acc.push(eventTime), value);
            acc.sum += value;
        }
        while (acc.headBefore(eventTime - windowMs)) {
            long seq = acc.pop();
            acc.sum -= acc.values.get(seq);
            acc.values.remove(seq);
        }
        if (acc.size() == 0) {
            acc.sum = 0.0; // no drift from adding and removing
        }
    }

    @Override
    public Double getValue(Acc acc) {
        return acc.sum;
    }
}
