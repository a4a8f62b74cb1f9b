package pricing.features;

import org.apache.flink.table.api.DataTypes;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.catalog.DataTypeFactory;
import org.apache.flink.table.functions.ProcessTableFunction;
import org.apache.flink.table.functions.TableSemantics;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.inference.CallContext;
import org.apache.flink.table.types.inference.StateTypeStrategy;
import org.apache.flink.table.types.inference.StaticArgument;
import org.apache.flink.table.types.inference.StaticArgumentTrait;
import org.apache.flink.table.types.inference.TypeInference;
import org.apache.flink.types.Row;

import java.time.Duration;
import java.util.Arrays;
import java.util.EnumSet;
import java.util.LinkedHashMap;
import java.util.Optional;

/**
 * Arrival mode's catch-up gate between the union of all inputs and the feature windows: a row goes
 * on once every input has been read far enough, so that rows reach the windows in nearly the order
 * of their event times whatever the backlog, and at once while the job reads live traffic.
 *
 * <p>Arrival mode prices a request with the events processed before it. Live, every input is
 * current and nothing waits here. After a start on a backlog (a warm start, a restart after an
 * outage) Kafka's topics are read side by side at different speeds, and without the gate:
 *
 * <ul>
 *   <li>a request could reach the windows before its product's list price, read a minute earlier in
 *       event time from another topic (it was priced by the fallback);
 *   <li>a small topic read to its end in a second would reach the windows hours ahead of the
 *       requests, and the arrival window functions, which keep each key's entries only as far back as
 *       the key's newest event time minus the window and an allowance, would have let the entries
 *       that those requests need leave.
 * </ul>
 *
 * <p>The rule: with W the watermark of this subtask (the minimum over every input that is not idle),
 * a request with event time t goes on once {@code W >= t - horizon_ms}, any other row once {@code W >=
 * t - context_horizon_ms}. Since all rows of a product pass through this one function instance and go
 * on to the product's windows in the order they leave it:
 *
 * <ul>
 *   <li>a released request comes after every row of its product with an event time at or before
 *       {@code t - horizon_ms} that is not late (late rows are dead-lettered before the union);
 *   <li>no row reaches the windows more than {@code context_horizon_ms} (plus the out-of-orderness)
 *       ahead of a request released with it, so keep {@code context_horizon_ms} within the arrival
 *       window functions' allowance.
 * </ul>
 *
 * <p>The table argument is partitioned by product; rows whose {@code src} column is {@code 'request'}
 * are requests; every row's time is its {@code event_time} (BIGINT, epoch millis). A row stamped ahead
 * of this machine's clock (up to max_clock_skew_ms passes the decoder) is gated as if stamped now: the
 * inputs cannot be read up to a time that has not come. Output: the input's columns. Held rows are
 * keyed state (a map from release time to the rows released then) with one event-time timer per held
 * time, so a restore keeps them, each leaves exactly once, and rows of one release time leave in the
 * order they arrived. Until every input has a watermark (or is idle) every row waits.
 */
public class ArrivalGate extends ProcessTableFunction<Row> {

    private static final String STATE = "held";

    public void eval(Context ctx, MapView<Long, Row[]> held, Row input, Long horizonMs, Long contextHorizonMs)
            throws Exception {
        boolean request = "request".equals(input.getField("src"));
        long horizon = request ? orZero(horizonMs) : orZero(contextHorizonMs);
        long release = Math.min((Long) input.getField("event_time"), System.currentTimeMillis()) - horizon;
        TimeContext<Long> time = ctx.timeContext(Long.class);
        Long watermark = time.currentWatermark();
        if (watermark != null && watermark >= release) {
            collect(input);
            return;
        }
        Row[] waiting = held.get(release);
        held.put(release, waiting == null ? new Row[] {input} : append(waiting, input));
        time.registerOnTime(release);
    }

    public void onTimer(OnTimerContext ctx, MapView<Long, Row[]> held) throws Exception {
        Long release = ctx.timeContext(Long.class).time();
        Row[] rows = held.get(release);
        if (rows == null) {
            return;
        }
        held.remove(release);
        for (Row row : rows) {
            collect(row);
        }
    }

    private static long orZero(Long value) {
        return value == null ? 0L : value;
    }

    private static Row[] append(Row[] rows, Row row) {
        Row[] out = Arrays.copyOf(rows, rows.length + 1);
        out[rows.length] = row;
        return out;
    }

    @Override
    public TypeInference getTypeInference(DataTypeFactory typeFactory) {
        LinkedHashMap<String, StateTypeStrategy> state = new LinkedHashMap<>();
        // No state TTL (Duration.ZERO), whatever table.exec.state.ttl says: each held row leaves by its own timer,
        // so the state is bounded by the backlog already; a TTL would only add its bookkeeping to every access
        // (measured: a quarter of the gate's time on a backlog) and could drop rows held longer than it.
        state.put(STATE, StateTypeStrategy.of(context -> inputType(context)
                .map(row -> MapView.newMapViewDataType(DataTypes.BIGINT().notNull(), DataTypes.ARRAY(row))), Duration.ZERO));
        return TypeInference.newBuilder()
                .staticArguments(
                        StaticArgument.table("input", Row.class, false,
                                EnumSet.of(StaticArgumentTrait.TABLE, StaticArgumentTrait.SET_SEMANTIC_TABLE)),
                        StaticArgument.scalar("horizon_ms", DataTypes.BIGINT(), false),
                        StaticArgument.scalar("context_horizon_ms", DataTypes.BIGINT(), false))
                .stateTypeStrategies(state)
                .outputTypeStrategy(ArrivalGate::inputType)
                .build();
    }

    private static Optional<DataType> inputType(CallContext context) {
        return context.getTableSemantics(0).map(TableSemantics::dataType);
    }
}
