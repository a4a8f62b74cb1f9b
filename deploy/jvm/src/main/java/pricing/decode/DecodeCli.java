package pricing.decode;

import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import java.util.stream.Stream;

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
 */
public final class DecodeCli {
    private DecodeCli() {}

    public static void main(String[] args) throws IOException {
        if (args.length != 1) {
            System.err.println("usage: DecodeCli <schemas dir>");
            System.exit(2);
        }
        Path schemas = Paths.get(args[0]);
        Map<String, ContractDecoder> decoders = new HashMap<>();
        DataInputStream in = new DataInputStream(System.in);
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out, 1 << 16), false, StandardCharsets.UTF_8);
        while (true) {
            int count;
            try {
                count = in.readInt();
            } catch (EOFException e) {
                break;
            }
            List<String> lines = new ArrayList<>(count);
            for (int i = 0; i < count; i++) {
                byte[] name = new byte[in.readUnsignedByte()];
                in.readFully(name);
                String contract = new String(name, StandardCharsets.US_ASCII);
                int length = in.readInt();
                byte[] value = null;
                if (length >= 0) {
                    value = new byte[length];
                    in.readFully(value);
                }
                ContractDecoder decoder = decoders.computeIfAbsent(contract, c -> load(schemas, c));
                lines.add(json(describe(decoder, decoder.decode(value))));
            }
            for (String line : lines) {
                out.println(line);
            }
            out.flush();
        }
        out.flush();
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
        try {
            String current = Files.readString(schemas.resolve(contract + ".avsc"));
            List<String> history = new ArrayList<>();
            Path frozen = schemas.resolve("history").resolve(contract);
            if (Files.isDirectory(frozen)) {
                try (Stream<Path> files = Files.list(frozen)) {
                    for (Path p : files.filter(p -> p.toString().endsWith(".avsc")).sorted().collect(Collectors.toList())) {
                        history.add(Files.readString(p));
                    }
                }
            }
            return new ContractDecoder(contract, current, history);
        } catch (IOException e) {
            throw new IllegalArgumentException("cannot read the schemas of " + contract + " under " + schemas + ": " + e, e);
        }
    }
}
