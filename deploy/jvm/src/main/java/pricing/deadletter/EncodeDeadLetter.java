package pricing.deadletter;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Instant;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * The job's dead-letter encoder, in the JVM: {@code (source topic, partition, offset, raw bytes, error kind, message,
 * record time) -> a framed DeadLetter} (Avro single-object encoding of {@code dead_letter.avsc}, whose JSON comes from
 * {@code pricing_udfs.serde}). The same bytes as {@code pricing_udfs.udfs.encode_dead_letters}, the reference
 * ({@code tests/pricing_udfs/test_dead_letter_encoder.py} compares them on random dead letters), so that rejected
 * records never cross into Python.
 *
 * <p>A dead letter's size does not depend on its input: at most {@code maxRawBytes} of the bad value (with its whole
 * size and SHA-256) and a message clipped to {@value #MAX_MESSAGE_CHARS} characters. With {@code digest} the decoders
 * kept only each value's digest ({@code pricing_udfs.privacy.digest_token}): no byte of it is kept here either. An
 * error kind the schema does not know becomes {@code other}. Stateless; what Flink replays is encoded again.
 */
public final class EncodeDeadLetter extends ScalarFunction {
    private static final long serialVersionUID = 1L;
    static final int MAX_MESSAGE_CHARS = 2_000;
    private static final byte[] DIGEST = "sha256+size:".getBytes(StandardCharsets.US_ASCII);

    private final String schemaJson;
    private final int maxRawBytes;
    private final boolean digest;

    private transient Schema schema;
    private transient Schema kindSchema;
    private transient Set<String> kinds;
    private transient GenericDatumWriter<GenericRecord> writer;
    private transient byte[] header;
    private transient ByteArrayOutputStream buffer;
    private transient BinaryEncoder encoder;
    private transient MessageDigest sha256;

    public EncodeDeadLetter(String schemaJson, int maxRawBytes, boolean digest) {
        this.schemaJson = schemaJson;
        this.maxRawBytes = maxRawBytes;
        this.digest = digest;
    }

    private void init() {
        schema = new Schema.Parser().parse(schemaJson);
        kindSchema = schema.getField("error_kind").schema();
        kinds = new HashSet<>(kindSchema.getEnumSymbols());
        writer = new GenericDatumWriter<>(schema);
        header = ByteBuffer.allocate(10).order(ByteOrder.LITTLE_ENDIAN)
                .put((byte) 0xC3).put((byte) 0x01).putLong(SchemaNormalization.parsingFingerprint64(schema)).array();
        buffer = new ByteArrayOutputStream(256);
        try {
            sha256 = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    public byte[] eval(String topic, Integer partition, Long offset, byte[] raw, String kind, String message, Long recordTime) {
        return encode(topic, partition, offset, raw, kind, message, recordTime, System.currentTimeMillis());
    }

    /** The record time as the event-time branch has it: the row's time attribute. */
    public byte[] eval(String topic, Integer partition, Long offset, byte[] raw, String kind, String message, Instant recordTime) {
        return encode(topic, partition, offset, raw, kind, message, recordTime.toEpochMilli(), System.currentTimeMillis());
    }

    byte[] encode(String topic, int partition, long offset, byte[] raw, String kind, String message, long recordMs, long nowMs) {
        if (schema == null) {
            init();
        }
        byte[] value = raw == null ? new byte[0] : raw;
        String sha = null;
        long size = -1;
        if (digest && value.length == DIGEST.length + 40
                && Arrays.equals(Arrays.copyOf(value, DIGEST.length), DIGEST)) {
            sha = hex(Arrays.copyOfRange(value, DIGEST.length, DIGEST.length + 32));
            size = ByteBuffer.wrap(value, DIGEST.length + 32, 8).getLong();
        }
        if (sha == null) {
            sha = hex(sha256.digest(value));
            size = value.length;
        }
        byte[] keep = digest ? new byte[0] : Arrays.copyOf(value, Math.min(value.length, maxRawBytes));
        GenericRecord record = new GenericData.Record(schema);
        record.put("source_topic", topic);
        record.put("partition", partition);
        record.put("offset", offset);
        record.put("record_time", recordMs);
        record.put("raw", ByteBuffer.wrap(keep));
        record.put("error_kind", new GenericData.EnumSymbol(kindSchema, kind != null && kinds.contains(kind) ? kind : "other"));
        record.put("error_message", clip(message == null ? "" : message));
        record.put("time", nowMs);
        record.put("raw_size", size);
        record.put("raw_sha256", sha);
        record.put("raw_truncated", size > keep.length);
        buffer.reset();
        buffer.write(header, 0, header.length);
        encoder = EncoderFactory.get().binaryEncoder(buffer, encoder);
        try {
            writer.write(record, encoder);
            encoder.flush();
        } catch (IOException e) {
            throw new UncheckedIOException(e);  // a record that does not fit the schema is our bug
        }
        return buffer.toByteArray();
    }

    /** At most {@value #MAX_MESSAGE_CHARS} characters, counted as Python counts them (code points). */
    static String clip(String message) {
        int points = message.codePointCount(0, message.length());
        return points <= MAX_MESSAGE_CHARS ? message : message.substring(0, message.offsetByCodePoints(0, MAX_MESSAGE_CHARS));
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder(bytes.length * 2);
        for (byte b : bytes) {
            out.append(Character.forDigit((b >> 4) & 0xF, 16)).append(Character.forDigit(b & 0xF, 16));
        }
        return out.toString();
    }
}
