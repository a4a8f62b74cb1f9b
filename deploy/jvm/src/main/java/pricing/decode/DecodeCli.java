package pricing.decode;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * {@link ContractDecoder} as a process, for the differential test against the Python reference decoder
 * ({@code tests/pricing_udfs/test_jvm_decoder.py}) and for tools.
 *
 * <pre>java -cp pricing-features.jar:&lt;flink lib&gt;/* pricing.decode.DecodeCli &lt;schemas dir&gt;</pre>
 *
 * <p>Reads batches from standard input: a big-endian int32 record count, then per record a one-byte length and
 * the contract's name (ASCII), a big-endian int32 length (-1 for a null value) and the bytes. After each whole
 * batch it writes one JSON line per record, in order: {@code {"ok": true, "values": {column: value}}} or
 * {@code {"ok": false, "kind": ..., "message": ...}}. The schemas are {@code <dir>/<contract>.avsc} and the frozen
 * versions {@code <dir>/history/<contract>/*.avsc}, the files the job's Python side reads.
 *
 * <p>With {@code rows key=value...} after the folder, the whole {@link DecodeFunction} runs instead (the job's row:
 * clock skew, event time against the record timestamp, late against the watermark, kept bytes, digests,
 * pseudonyms), configured by {@code keep_raw}, {@code skew_ms} (negative: none), {@code late}, {@code secrets_dir},
 * {@code key_id}, {@code digest} and {@code users} ({@code contract:field,...}). Each record then also carries three
 * big-endian int64s after its bytes: the Kafka timestamp, the watermark ({@code Long.MIN_VALUE}: none) and the
 * offset; each line is the row as {@code {"row": [field values in order]}}, bytes in hex.
 */
public final class DecodeCli {
    private DecodeCli() {}

    public static void main(String[] args) throws IOException {
        Path schemas = Paths.get(args[0]);
        Map<String, String> rows = new HashMap<>();
        if (args.length > 1 && args[1].equals("rows")) {
            for (int i = 2; i < args.length; i++) {
                String[] kv = args[i].split("=", 2);
                rows.put(kv[0], kv[1]);
            }
        } else if (args.length != 1) {
            System.err.println("usage: DecodeCli <schemas dir> [rows key=value...]");
            System.exit(2);
        }
        boolean rowMode = args.length > 1;
        Map<String, DecodeFunction> functions = new HashMap<>();
        List<Row> collected = new ArrayList<>();
        Map<String, ContractDecoder> decoders = new HashMap<>();
        Batches.serve(in -> {
            byte[] name = new byte[in.readUnsignedByte()];
            in.readFully(name);
            String contract = new String(name, StandardCharsets.US_ASCII);
            byte[] value = Batches.bytes(in);
            if (rowMode) {
                long ts = in.readLong();
                long watermark = in.readLong();
                long offset = in.readLong();
                DecodeFunction function = functions.computeIfAbsent(contract, c -> open(schemas, c, rows, collected));
                collected.clear();
                function.eval(value, "topic-" + contract, 0, offset, Instant.ofEpochMilli(ts),
                        watermark == Long.MIN_VALUE ? null : Instant.ofEpochMilli(watermark));
                Object[] fields = new Object[collected.get(0).getArity()];
                for (int f = 0; f < fields.length; f++) {
                    Object v = collected.get(0).getField(f);
                    fields[f] = v instanceof byte[] ? ContractDecoder.hex((byte[]) v, 0, ((byte[]) v).length) : v;
                }
                Map<String, Object> line = new LinkedHashMap<>();
                line.put("row", fields);
                return json(line);
            }
            ContractDecoder decoder = decoders.computeIfAbsent(contract, c -> load(schemas, c));
            return json(describe(decoder, decoder.decode(value)));
        });
    }

    private static Map<String, Object> describe(ContractDecoder decoder, ContractDecoder.Result result) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("ok", result.ok);
        if (!result.ok) {
            out.put("kind", result.kind);
            out.put("message", result.message);
            return out;
        }
        Map<String, Object> values = new LinkedHashMap<>();
        for (int i = 0; i < decoder.columns().size(); i++) {
            values.put(decoder.columns().get(i).name, result.values[i]);
        }
        out.put("values", values);
        return out;
    }

    /** JSON of what {@link #describe} builds: maps, strings, numbers, booleans, null and arrays. */
    static String json(Object value) {
        StringBuilder out = new StringBuilder();
        write(out, value);
        return out.toString();
    }

    private static void write(StringBuilder out, Object value) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof Map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                out.append(first ? "" : ",");
                first = false;
                write(out, e.getKey().toString());
                out.append(':');
                write(out, e.getValue());
            }
            out.append('}');
        } else if (value instanceof Object[]) {
            out.append('[');
            Object[] items = (Object[]) value;
            for (int i = 0; i < items.length; i++) {
                out.append(i == 0 ? "" : ",");
                write(out, items[i]);
            }
            out.append(']');
        } else if (value instanceof Boolean || value instanceof Long || value instanceof Integer) {
            out.append(value);
        } else if (value instanceof Double) {
            double d = (Double) value;
            out.append(Double.isFinite(d) ? Double.toString(d) : "\"" + d + "\"");
        } else {
            String s = value.toString();
            out.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                if (c == '"' || c == '\\') {
                    out.append('\\').append(c);
                } else if (c < 0x20 || (c >= 0xD800 && c <= 0xDFFF)) {
                    out.append(String.format("\\u%04x", (int) c));
                } else {
                    out.append(c);
                }
            }
            out.append('"');
        }
    }

    static ContractDecoder load(Path schemas, String contract) {
        List<String> texts = schemaTexts(schemas, contract);
        return new ContractDecoder(contract, texts.get(0), texts.subList(1, texts.size()));
    }

    private static DecodeFunction open(Path schemas, String contract, Map<String, String> options, List<Row> sink) {
        List<String> texts = schemaTexts(schemas, contract);
        String userField = null;
        for (String pair : options.getOrDefault("users", "").split(",")) {
            String[] cf = pair.split(":", 2);
            if (cf.length == 2 && cf[0].equals(contract)) {
                userField = cf[1];
            }
        }
        DecodeFunction function = new DecodeFunction(contract, texts.get(0), texts.subList(1, texts.size()),
                Boolean.parseBoolean(options.get("keep_raw")), Long.parseLong(options.getOrDefault("skew_ms", "-1")),
                Boolean.parseBoolean(options.get("late")), userField, options.get("secrets_dir"), options.get("key_id"),
                Boolean.parseBoolean(options.get("digest")));
        try {
            function.open(new FunctionContext(null));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
        function.setCollector(new Collector<Row>() {
            @Override
            public void collect(Row row) {
                sink.add(row);
            }

            @Override
            public void close() {}
        });
        return function;
    }

    /** The current schema's JSON, then each frozen version's, oldest first. */
    private static List<String> schemaTexts(Path schemas, String contract) {
        try {
            List<String> texts = new ArrayList<>();
            texts.add(Files.readString(schemas.resolve(contract + ".avsc")));
            Path frozen = schemas.resolve("history").resolve(contract);
            if (Files.isDirectory(frozen)) {
                try (Stream<Path> files = Files.list(frozen)) {
                    for (Path p : files.filter(p -> p.toString().endsWith(".avsc")).sorted().collect(Collectors.toList())) {
                        texts.add(Files.readString(p));
                    }
                }
            }
            return texts;
        } catch (IOException e) {
            throw new IllegalArgumentException("cannot read the schemas of " + contract + " under " + schemas + ": " + e, e);
        }
    }
}
