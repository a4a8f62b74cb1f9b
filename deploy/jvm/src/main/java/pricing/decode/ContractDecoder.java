package pricing.decode;

import java.io.IOException;
import java.io.Serializable;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.util.Utf8;

/**
 * One contract's records off the wire, with Java Avro (the reference implementation): Avro single-object
 * encoding ({@code C3 01}, the writer schema's 8-byte little-endian CRC-64-AVRO fingerprint, the binary datum),
 * every writer version the job accepts (the current schema and the frozen history) resolved to the current
 * one, and the value rules that the current {@code .avsc} states in its {@code constraints} attributes.
 *
 * <p>The schemas come in as JSON text from the Python side ({@code pricing_udfs.serde} reads the
 * {@code .avsc} files), so there is one copy of each. Bad bytes are data: {@link #decode} never throws on
 * input, it returns a {@link Result} with an error kind (the {@code ErrorKind} symbols of
 * {@code dead_letter.avsc}) and a message. {@code pricing_udfs.serde.decode} is the reference this class
 * must agree with, kind for kind ({@code tests/pricing_udfs/test_jvm_decoder.py} feeds both the same bytes).
 *
 * <p>Allocation is bounded: Avro's own limits cap any string, byte or collection length read from the input
 * (a 20-byte record claiming a 2 GB string fails without allocating it).
 */
public final class ContractDecoder implements Serializable {
    private static final long serialVersionUID = 1L;

    public static final String BAD_FRAMING = "bad_framing";
    public static final String UNKNOWN_SCHEMA = "unknown_schema";
    public static final String BAD_PAYLOAD = "bad_payload";
    public static final String INVALID_VALUE = "invalid_value";
    public static final String LATE = "late";

    /** The most bytes, characters or items any one value of a record may claim (a Kafka record is at most a few MB). */
    static final long MAX_LENGTH = 8L << 20;

    static {
        // Read once, when Avro's SystemLimitException is first loaded; set before any Avro class is used here.
        // (In the job's jar Avro is relocated, and so are these names, so no other Avro in the JVM is affected.)
        for (String name : new String[] {"org.apache.avro.limits.string.maxLength", "org.apache.avro.limits.bytes.maxLength",
                "org.apache.avro.limits.collectionItems.maxLength", "org.apache.avro.limits.collectionItems.maxAllocation"}) {
            if (System.getProperty(name) == null) {
                System.setProperty(name, Long.toString(MAX_LENGTH));
            }
        }
    }

    private static final byte MAGIC_0 = (byte) 0xC3;
    private static final byte MAGIC_1 = (byte) 0x01;
    static final int HEADER_LEN = 10;
    private static final int MESSAGE_LIMIT = 500;
    private static final Pattern ISO_4217 = Pattern.compile("[A-Z]{3}");

    /** What {@link #decode} found: ok with the decoded columns, or an error kind and message. */
    public static final class Result {
        public final boolean ok;
        public final String kind;
        public final String message;
        /** The decoded columns (see {@link #columns()}), Java values as Flink's default conversion classes want them. */
        public final Object[] values;
        /** The record resolved to the current schema (what the archive writes); null when rejected. */
        public final GenericRecord record;

        private Result(boolean ok, String kind, String message, Object[] values, GenericRecord record) {
            this.ok = ok;
            this.kind = kind;
            this.message = message;
            this.values = values;
            this.record = record;
        }

        static Result ok(Object[] values, GenericRecord record) {
            return new Result(true, null, null, values, record);
        }

        static Result rejected(String kind, String message) {
            return new Result(false, kind, clip(message), null, null);
        }
    }

    /** A decoded column: a top-level field of the current schema (maps are read and checked but not columns). */
    public static final class Column implements Serializable {
        private static final long serialVersionUID = 1L;
        public final String name;
        /** Avro type of the column's values: string, long, int, boolean, double, enum; for arrays, of the items. */
        public final String avroType;
        public final boolean array;

        Column(String name, String avroType, boolean array) {
            this.name = name;
            this.avroType = avroType;
            this.array = array;
        }
    }

    private final String contract;
    private final String currentSchema;
    private final List<String> writerSchemas;

    private transient Map<Long, GenericDatumReader<GenericRecord>> readers;
    private transient List<Column> columns;
    private transient int[] positions;
    private transient List<Rule> rules;
    private transient BinaryDecoder reuse;
    private transient StrictDecoder strict;
    private transient CharsetDecoder utf8;

    /**
     * @param contract the contract's name ({@code price_request}), for messages
     * @param currentSchema the current {@code .avsc} as JSON: the reader schema, and the one whose rules apply
     * @param writerSchemas every frozen writer version as JSON (the current one is always accepted too)
     */
    public ContractDecoder(String contract, String currentSchema, List<String> writerSchemas) {
        this.contract = contract;
        this.currentSchema = currentSchema;
        this.writerSchemas = new ArrayList<>(writerSchemas);
        init();
    }

    private void init() {
        Schema reader = new Schema.Parser().parse(currentSchema);
        Map<Long, GenericDatumReader<GenericRecord>> byPrint = new HashMap<>();
        byPrint.put(SchemaNormalization.parsingFingerprint64(reader), new GenericDatumReader<>(reader, reader));
        for (String json : writerSchemas) {
            Schema writer = new Schema.Parser().parse(json);
            byPrint.putIfAbsent(SchemaNormalization.parsingFingerprint64(writer), new GenericDatumReader<>(writer, reader));
        }
        readers = byPrint;
        List<Column> cols = new ArrayList<>();
        List<Integer> pos = new ArrayList<>();
        List<Rule> found = new ArrayList<>();
        for (Schema.Field field : reader.getFields()) {
            Schema type = nonNull(field.schema());
            if (type.getType() == Schema.Type.ARRAY && !nested(nonNull(type.getElementType()))) {
                cols.add(new Column(field.name(), primitive(nonNull(type.getElementType()), field.name()), true));
                pos.add(field.pos());
            } else if (!nested(type)) {  // maps (free-form attributes), records: read and checked, not columns
                cols.add(new Column(field.name(), primitive(type, field.name()), false));
                pos.add(field.pos());
            }
            Object constraints = field.getObjectProp("constraints");
            if (constraints instanceof Map) {
                @SuppressWarnings("unchecked")
                Map<String, Object> spec = (Map<String, Object>) constraints;
                found.add(new Rule(field.name(), field.pos(), spec));
            }
        }
        columns = Collections.unmodifiableList(cols);
        positions = pos.stream().mapToInt(Integer::intValue).toArray();
        rules = found;
        strict = new StrictDecoder();
        utf8 = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
    }

    private void readObject(java.io.ObjectInputStream in) throws IOException, ClassNotFoundException {
        in.defaultReadObject();
        init();
    }

    public String contract() {
        return contract;
    }

    public List<Column> columns() {
        return columns;
    }

    private static Schema nonNull(Schema schema) {
        if (schema.getType() != Schema.Type.UNION) {
            return schema;
        }
        for (Schema branch : schema.getTypes()) {
            if (branch.getType() != Schema.Type.NULL) {
                return branch;
            }
        }
        throw new IllegalArgumentException("a union of null alone: " + schema);
    }

    private static boolean nested(Schema type) {
        return type.getType() == Schema.Type.MAP || type.getType() == Schema.Type.RECORD
                || type.getType() == Schema.Type.ARRAY;
    }

    private static String primitive(Schema type, String field) {
        switch (type.getType()) {
            case STRING: case LONG: case INT: case BOOLEAN: case DOUBLE: case ENUM: case BYTES:
                return type.getType().getName();
            default:
                throw new IllegalArgumentException(field + ": no column type for Avro " + type);
        }
    }

    /** Decode one framed record; bad bytes give a rejected result, never an exception. */
    public Result decode(byte[] data) {
        if (data == null) {
            return Result.rejected(BAD_FRAMING, "record has no value (null)");
        }
        if (data.length < HEADER_LEN || data[0] != MAGIC_0 || data[1] != MAGIC_1) {
            String head = data.length == 0 ? "nothing" : hex(data, 0, Math.min(2, data.length));
            return Result.rejected(BAD_FRAMING, "not Avro single-object encoding: expected marker c301 and 10-byte header, got "
                    + head + " (" + data.length + " bytes)");
        }
        long print = ByteBuffer.wrap(data, 2, 8).order(java.nio.ByteOrder.LITTLE_ENDIAN).getLong();
        GenericDatumReader<GenericRecord> reader = readers.get(print);
        if (reader == null) {
            return Result.rejected(UNKNOWN_SCHEMA, "writer schema fingerprint " + hex(data, 2, HEADER_LEN)
                    + " is not a known version of " + contract);
        }
        reuse = DecoderFactory.get().binaryDecoder(data, HEADER_LEN, data.length - HEADER_LEN, reuse);
        GenericRecord record;
        int trailing;
        try {
            record = reader.read(null, strict.on(reuse));
            trailing = reuse.isEnd() ? 0 : reuse.inputStream().available();
        } catch (IOException | RuntimeException | StackOverflowError | OutOfMemoryError e) {
            return Result.rejected(BAD_PAYLOAD, contract + ": " + e.getClass().getSimpleName() + ": " + e.getMessage());
        }
        if (trailing > 0) {
            return Result.rejected(BAD_PAYLOAD, contract + ": " + trailing + " trailing bytes after the datum");
        }
        Object[] values = new Object[columns.size()];
        try {
            for (int i = 0; i < values.length; i++) {
                values[i] = column(columns.get(i), record.get(positions[i]));
            }
            checkText(record);
        } catch (CharacterCodingException e) {
            return Result.rejected(BAD_PAYLOAD, contract + ": a string is not valid UTF-8 (" + e.getMessage() + ")");
        }
        for (Rule rule : rules) {
            String problem = rule.check(record);
            if (problem != null) {
                return Result.rejected(INVALID_VALUE, contract + ": " + problem);
            }
        }
        return Result.ok(values, record);
    }

    private Object column(Column column, Object value) throws CharacterCodingException {
        if (value == null) {
            return null;
        }
        if (column.array) {
            List<?> items = (List<?>) value;
            Object[] out = column.avroType.equals("string") || column.avroType.equals("enum")
                    ? new String[items.size()] : newArray(column.avroType, items.size());
            for (int i = 0; i < out.length; i++) {
                out[i] = scalar(items.get(i));
            }
            return out;
        }
        return scalar(value);
    }

    private static Object[] newArray(String avroType, int n) {
        switch (avroType) {
            case "long": return new Long[n];
            case "int": return new Integer[n];
            case "boolean": return new Boolean[n];
            default: return new Double[n];
        }
    }

    private Object scalar(Object value) throws CharacterCodingException {
        if (value == null) {
            return null;
        }
        if (value instanceof Utf8) {
            return text((Utf8) value);
        }
        if (value instanceof GenericData.EnumSymbol || value instanceof CharSequence) {
            return value.toString();
        }
        if (value instanceof ByteBuffer) {  // bytes (dead letters' raw record): byte[], Flink's BYTES
            ByteBuffer buffer = ((ByteBuffer) value).duplicate();
            byte[] out = new byte[buffer.remaining()];
            buffer.get(out);
            return out;
        }
        return value;  // Long, Integer, Boolean, Double: Flink's default conversion classes already
    }

    /** Strict UTF-8 (Avro's own {@code Utf8.toString} replaces bad bytes silently; the reference rejects them). */
    private String text(Utf8 value) throws CharacterCodingException {
        CharBuffer chars = utf8.reset().decode(ByteBuffer.wrap(value.getBytes(), 0, value.getByteLength()));
        return chars.toString();
    }

    /** Every string of the record, columns or not (map keys and values), must be valid UTF-8. */
    private void checkText(GenericRecord record) throws CharacterCodingException {
        for (Schema.Field field : record.getSchema().getFields()) {
            checkText(record.get(field.pos()));
        }
    }

    private void checkText(Object value) throws CharacterCodingException {
        if (value instanceof Utf8) {
            text((Utf8) value);
        } else if (value instanceof Map) {
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                checkText(e.getKey());
                checkText(e.getValue());
            }
        } else if (value instanceof List) {
            for (Object item : (List<?>) value) {
                checkText(item);
            }
        }
    }

    static String hex(byte[] data, int from, int to) {
        StringBuilder out = new StringBuilder();
        for (int i = from; i < to; i++) {
            out.append(String.format("%02x", data[i] & 0xff));
        }
        return out.toString();
    }

    static String clip(String message) {
        return message.length() <= MESSAGE_LIMIT ? message : message.substring(0, MESSAGE_LIMIT - 3) + "...";
    }

    /** The {@code constraints} of one field, as {@code pricing_udfs.serde._Rule} reads them (its docstring lists the keys). */
    private static final class Rule {
        final String field;
        final int pos;
        final Map<String, Object> spec;

        Rule(String field, int pos, Map<String, Object> spec) {
            this.field = field;
            this.pos = pos;
            this.spec = new LinkedHashMap<>(spec);
        }

        @SuppressWarnings("unchecked")
        String check(GenericRecord record) {
            Map<String, Object> rule = spec;
            String where = "";
            if (spec.containsKey("by")) {
                String by = (String) spec.get("by");
                Object key = record.get(by);
                String keyText = key == null ? "None" : key.toString();
                Object cases = spec.get("cases");
                Object found = cases instanceof Map ? ((Map<String, Object>) cases).get(keyText) : null;
                rule = found instanceof Map ? (Map<String, Object>) found : Collections.emptyMap();
                where = " for " + by + " " + keyText;
            }
            Object value = record.get(pos);
            if (value == null) {
                return null;
            }
            if (value instanceof List) {
                List<?> items = (List<?>) value;
                Number maxItems = (Number) rule.get("max_items");
                if (maxItems != null && items.size() > maxItems.longValue()) {
                    return field + " has " + items.size() + " items, more than " + maxItems;
                }
                long lo = rule.containsKey("item_min_length") ? ((Number) rule.get("item_min_length")).longValue() : 0;
                Number hi = (Number) rule.get("item_max_length");
                for (int i = 0; i < items.size(); i++) {
                    if (!(items.get(i) instanceof CharSequence)) {
                        continue;
                    }
                    long n = length(items.get(i));
                    if (n < lo) {
                        return n == 0 ? field + "[" + i + "] is empty" : field + "[" + i + "] is shorter than " + lo;
                    }
                    if (hi != null && n > hi.longValue()) {
                        return field + "[" + i + "] has " + n + " characters, more than " + hi;
                    }
                }
                return null;
            }
            if (value instanceof CharSequence && !(value instanceof GenericData.EnumSymbol)) {
                long n = length(value);
                Number lo = (Number) rule.get("min_length");
                Number hi = (Number) rule.get("max_length");
                if (lo != null && n < lo.longValue()) {
                    return n == 0 ? field + " is empty" : field + " is shorter than " + lo;
                }
                if (hi != null && n > hi.longValue()) {
                    return field + " has " + n + " characters, more than " + hi;
                }
                return null;
            }
            if (!(value instanceof Number)) {
                return null;
            }
            Number lo = (Number) rule.get("min");
            Number hi = (Number) rule.get("max");
            if ((lo != null && compare((Number) value, lo) < 0) || (hi != null && compare((Number) value, hi) > 0)) {
                return field + " " + value + " is outside [" + (lo == null ? "None" : lo) + ", " + (hi == null ? "None" : hi)
                        + "]" + where;
            }
            if ("minor".equals(rule.get("unit"))) {
                Object currency = record.getSchema().getField("currency") == null ? null : record.get("currency");
                if (currency == null || !ISO_4217.matcher(currency.toString()).matches()) {
                    return field + " is money and needs an ISO-4217 currency, got " + (currency == null ? "None" : "'" + currency + "'");
                }
            }
            return null;
        }

        /** Characters as Python counts them: code points. */
        private static long length(Object text) {
            String s = text.toString();
            return s.codePointCount(0, s.length());
        }

        private static int compare(Number value, Number bound) {
            boolean integral = !(value instanceof Double || value instanceof Float || bound instanceof Double || bound instanceof Float);
            if (integral) {
                return Long.compare(value.longValue(), bound.longValue());
            }
            double v = value.doubleValue();
            // As Python compares: NaN is neither below nor above a bound.
            return Double.isNaN(v) ? 0 : Double.compare(v, bound.doubleValue());
        }
    }
}
