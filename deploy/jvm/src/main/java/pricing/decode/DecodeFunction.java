package pricing.decode;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.metrics.Counter;
import org.apache.flink.table.api.DataTypes;
import org.apache.flink.table.catalog.DataTypeFactory;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.TableFunction;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.inference.TypeInference;
import org.apache.flink.table.types.inference.TypeStrategies;
import org.apache.flink.types.Row;

/**
 * The job's decoder of one input contract, in the JVM: a table function {@code (value, topic, partition, offset, ts,
 * watermark) -> one row (ok, error_kind, error_message, source_topic, source_partition, source_offset, raw_value,
 * record_time, fields...)}, the row {@code pricing_udfs.udfs.decoder} returns (that Python UDF stays the reference;
 * the job uses this one, so context events never cross into Python).
 *
 * <p>A table function (used with {@code LATERAL TABLE}), not a scalar one: the planner inlines a scalar call into
 * every read of its row's fields, which decoded each record once per field (measured: 13 to 18 calls a record).
 *
 * <p>Beyond {@link ContractDecoder}: a record stamped more than {@code maxClockSkewMs} ahead of the wall clock, or
 * whose payload {@code event_time} differs from its Kafka timestamp, is {@code invalid_value}; with {@code late},
 * one at or behind the source's current watermark is {@code late} (Flink's event-time operators would drop it).
 * The bytes are kept for rejected rows (and for every row with {@code keepRaw}); in {@code digest} mode only
 * their SHA-256 and size ({@code pricing_udfs.privacy.digest_token}). With a key id, the user field is replaced
 * by its pseudonym ({@link Pseudonymiser}) before anything downstream sees it.
 *
 * <p>Stateless: what Flink replays after a restart is decoded again, the same way.
 */
public final class DecodeFunction extends TableFunction<Row> {
    private static final long serialVersionUID = 1L;
    private static final byte[] DIGEST = "sha256+size:".getBytes(StandardCharsets.US_ASCII);

    private final ContractDecoder decoder;
    private final boolean keepRaw;
    private final long maxClockSkewMs;  // negative: no check
    private final boolean late;
    private final String userField;  // null: no pseudonyms
    private final String secretsDir;
    private final String keyId;
    private final boolean digest;

    private transient Pseudonymiser pseudonymiser;
    private transient int userColumn;
    private transient int eventTimeColumn;
    private transient MessageDigest sha256;
    private transient Counter lateEvents;
    private transient Counter rejected;

    /**
     * @param maxClockSkewMs negative for no check
     * @param userField the field naming a shopper, pseudonymised with the key {@code <secretsDir>/pseudonym.key}
     *     under {@code keyId}; null to keep it as it is
     */
    public DecodeFunction(String contract, String currentSchema, List<String> writerSchemas, boolean keepRaw,
            long maxClockSkewMs, boolean late, String userField, String secretsDir, String keyId, boolean digest) {
        this.decoder = new ContractDecoder(contract, currentSchema, writerSchemas);
        this.keepRaw = keepRaw;
        this.maxClockSkewMs = maxClockSkewMs;
        this.late = late;
        this.userField = userField;
        this.secretsDir = secretsDir;
        this.keyId = keyId;
        this.digest = digest;
    }

    @Override
    public void open(FunctionContext context) throws Exception {
        if (userField != null) {
            pseudonymiser = Pseudonymiser.fromFile(Paths.get(secretsDir, "pseudonym.key"), keyId);
            userColumn = columnIndex(userField);
        }
        eventTimeColumn = columnIndex("event_time");
        sha256 = digestAlgorithm();
        var group = context.getMetricGroup().addGroup("contract", decoder.contract());
        lateEvents = group.counter("late_events");
        rejected = group.counter("rejected_records");
    }

    private int columnIndex(String name) {
        List<ContractDecoder.Column> columns = decoder.columns();
        for (int i = 0; i < columns.size(); i++) {
            if (columns.get(i).name.equals(name)) {
                return i;
            }
        }
        throw new IllegalArgumentException(decoder.contract() + " has no field " + name);
    }

    private static MessageDigest digestAlgorithm() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Not deterministic: the clock-skew check reads the wall clock. */
    @Override
    public boolean isDeterministic() {
        return false;
    }

    @Override
    public TypeInference getTypeInference(DataTypeFactory typeFactory) {
        return TypeInference.newBuilder()
                .typedArguments(DataTypes.BYTES(), DataTypes.STRING(), DataTypes.INT(), DataTypes.BIGINT(),
                        DataTypes.TIMESTAMP_LTZ(3).bridgedTo(Instant.class), DataTypes.TIMESTAMP_LTZ(3).bridgedTo(Instant.class))
                .outputTypeStrategy(TypeStrategies.explicit(outputType(decoder)))
                .build();
    }

    /** The ROW type: the status fields, then the decoded columns (as {@code pricing_udfs.udfs.decoded_type}). */
    static DataType outputType(ContractDecoder decoder) {
        List<DataTypes.Field> fields = new ArrayList<>();
        fields.add(DataTypes.FIELD("ok", DataTypes.BOOLEAN()));
        fields.add(DataTypes.FIELD("error_kind", DataTypes.STRING()));
        fields.add(DataTypes.FIELD("error_message", DataTypes.STRING()));
        fields.add(DataTypes.FIELD("source_topic", DataTypes.STRING()));
        fields.add(DataTypes.FIELD("source_partition", DataTypes.INT()));
        fields.add(DataTypes.FIELD("source_offset", DataTypes.BIGINT()));
        fields.add(DataTypes.FIELD("raw_value", DataTypes.BYTES()));
        fields.add(DataTypes.FIELD("record_time", DataTypes.BIGINT()));
        for (ContractDecoder.Column column : decoder.columns()) {
            DataType type = flinkType(column.avroType);
            fields.add(DataTypes.FIELD(column.name, column.array ? DataTypes.ARRAY(type) : type));
        }
        return DataTypes.ROW(fields.toArray(new DataTypes.Field[0]));
    }

    private static DataType flinkType(String avroType) {
        switch (avroType) {
            case "long": return DataTypes.BIGINT();
            case "int": return DataTypes.INT();
            case "boolean": return DataTypes.BOOLEAN();
            case "double": return DataTypes.DOUBLE();
            default: return DataTypes.STRING();  // string, enum
        }
    }

    public void eval(byte[] value, String topic, Integer partition, Long offset, Instant ts, Instant watermark) {
        long tsMs = ts.toEpochMilli();
        ContractDecoder.Result result = decoder.decode(value);
        String kind = result.kind;
        String message = result.message;
        if (result.ok) {
            long eventTime = (Long) result.values[eventTimeColumn];
            long horizon = maxClockSkewMs >= 0 ? System.currentTimeMillis() + maxClockSkewMs : Long.MAX_VALUE;
            if (tsMs > horizon) {
                kind = ContractDecoder.INVALID_VALUE;
                message = decoder.contract() + ": event_time " + tsMs + " is " + (tsMs - horizon + maxClockSkewMs)
                        + " ms ahead of the engine's clock, more than max_clock_skew_ms (" + maxClockSkewMs + ")";
            } else if (eventTime != tsMs) {
                kind = ContractDecoder.INVALID_VALUE;
                message = decoder.contract() + ": event_time " + eventTime + " differs from the Kafka record timestamp " + tsMs
                        + "; producers must set the record timestamp to event_time";
            } else if (late && watermark != null && tsMs <= watermark.toEpochMilli()) {
                long wm = watermark.toEpochMilli();
                kind = ContractDecoder.LATE;
                message = decoder.contract() + ": event_time " + tsMs + " is not after the watermark (it is " + (wm - tsMs)
                        + " ms behind) " + wm + "; raise watermark_out_of_orderness_ms to accept such events";
            }
        }
        boolean ok = kind == null;
        boolean real = offset != null && offset >= 0;  // a negative offset marks a source turning idle, not a record
        if (!ok && real) {
            rejected.inc();
            if (ContractDecoder.LATE.equals(kind)) {
                lateEvents.inc();
            }
        }
        List<ContractDecoder.Column> columns = decoder.columns();
        Row row = Row.withPositions(8 + columns.size());
        row.setField(0, ok);
        row.setField(1, kind);
        row.setField(2, message);
        row.setField(3, topic);
        row.setField(4, partition);
        row.setField(5, offset);
        byte[] kept = keepRaw || !ok ? value : null;
        row.setField(6, digest && kept != null ? digestToken(kept) : kept);
        row.setField(7, tsMs);
        if (ok) {
            for (int i = 0; i < columns.size(); i++) {
                Object v = result.values[i];
                if (pseudonymiser != null && i == userColumn) {
                    v = pseudonymiser.apply((String) v);
                }
                row.setField(8 + i, v);
            }
        }
        collect(row);
    }

    /** A record's bytes replaced by SHA-256 and size, as {@code pricing_udfs.privacy.digest_token} writes them. */
    byte[] digestToken(byte[] raw) {
        byte[] hash = sha256.digest(raw);
        return ByteBuffer.allocate(DIGEST.length + hash.length + 8).put(DIGEST).put(hash).putLong(raw.length).array();
    }
}
