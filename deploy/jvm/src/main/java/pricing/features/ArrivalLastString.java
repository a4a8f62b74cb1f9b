package pricing.features;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/** {@link ArrivalLastLong} for strings (the list price's currency). */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = ArrivalLatest.class),
        output = @DataTypeHint("STRING"))
public class ArrivalLastString extends AggregateFunction<String, ArrivalLatest> {

    @Override
    public ArrivalLatest createAccumulator() {
        ArrivalLatest acc = new ArrivalLatest();
        acc.strings = new String[8];
        return acc;
    }

    public void accumulate(ArrivalLatest acc, Long eventTime, String value, Long allowanceMs) {
        if (eventTime != null) {
            acc.add(eventTime, value != null, 0, value, allowanceMs);
        }
    }

    @Override
    public String getValue(ArrivalLatest acc) {
        int i = acc.latest();
        if (i == -2) {
            return null;
        }
        return i >= 0 ? acc.strings[i] : acc.baseString;
    }
}
