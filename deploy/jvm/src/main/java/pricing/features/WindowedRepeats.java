package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * How often the current row's key already occurred among the earlier rows whose event time lies in
 * [t - window, t]: 0 for a key's first copy in the window. The job uses it to find repeated price
 * requests (same request_id). Exact, in keyed state like {@link WindowedDistinct}.
 *
 * <p>Meant for a {@code ROWS} frame, where Flink reads the value after each row; in a {@code RANGE}
 * frame rows with equal times (peers) would all get the value of the last of them.
 */
@FunctionHint(output = @DataTypeHint("BIGINT"))
public class WindowedRepeats extends AggregateFunction<Long, WindowedRepeats.Acc> {

    /** The window's keys (as for {@link WindowedDistinct}) and the answer for the last row. */
    public static class Acc extends WindowedDistinct.Acc {
        public long before;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Long eventTime, String key, Long windowMs) throws Exception {
        if (eventTime == null) {
            return;
        }
        acc.evictBefore(eventTime - windowMs);
        acc.before = key == null ? 0 : acc.count(key);
        if (key != null) {
            acc.add(eventTime, key);
        }
    }

    @Override
    public Long getValue(Acc acc) {
        return acc.before;
    }
}
