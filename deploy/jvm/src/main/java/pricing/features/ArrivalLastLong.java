package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * Arrival mode: the latest non-null value by event time (ties: the last to arrive) among the rows
 * accumulated so far whose event time is at or before t, the event time of the row accumulated last; null
 * when there is none. Entries more than {@code allowanceMs} older than the newest event time seen leave,
 * except the latest of them.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = ArrivalLatest.class),
        output = @DataTypeHint("BIGINT"))
public class ArrivalLastLong extends AggregateFunction<Long, ArrivalLatest> {

    @Override
    public ArrivalLatest createAccumulator() {
        ArrivalLatest acc = new ArrivalLatest();
        acc.longs = new long[8];
        return acc;
    }

    public void accumulate(ArrivalLatest acc, Long eventTime, Long value, Long allowanceMs) {
        if (eventTime != null) {
            acc.add(eventTime, value != null, value == null ? 0 : value, null, allowanceMs);
        }
    }

    @Override
    public Long getValue(ArrivalLatest acc) {
        int i = acc.latest();
        if (i == -2) {
            return null;
        }
        return i >= 0 ? acc.longs[i] : acc.baseLong;
    }
}
