package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Minimum of the non-null values whose event time lies in [t - window, t] (see {@link WindowedSum}
 * for the window semantics); null when there is none. A monotonic deque in keyed state: O(1)
 * amortised per row, and the minimum and the newest candidate cached in the accumulator.
 */
@FunctionHint(output = @DataTypeHint("BIGINT"))
public class WindowedMin extends AggregateFunction<Long, WindowedMin.Acc> {

    /** Candidates for the minimum: times in the queue, values increasing from head to tail beside them. */
    public static class Acc extends TimeQueue {
        public MapView<Long, Long> values = new MapView<>();
        public long headValue;
        public long tailValue;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, Long value, Long windowMs) throws Exception {
        if (eventTime == null) {
            return;
        }
        if (value != null) {
            while (acc.size() > 0 && acc.tailValue >= value) {
                acc.values.remove(acc.popLast());
                if (acc.size() > 0) {
                    acc.tailValue = acc.values.get(acc.tail - 1);
                }
            }
            acc.values.put(acc.push(eventTime), value);
            acc.tailValue = value;
            if (acc.size() == 1) {
                acc.headValue = value;
            }
        }
        while (acc.headBefore(eventTime - windowMs)) {
            acc.values.remove(acc.pop());
            if (acc.size() > 0) {
                acc.headValue = acc.values.get(acc.head);
            }
        }
    }

    @Override
    public Long getValue(Acc acc) {
        return acc.size() == 0 ? null : acc.headValue;
    }
}
