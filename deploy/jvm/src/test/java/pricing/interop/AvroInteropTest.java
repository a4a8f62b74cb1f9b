package pricing.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.avro.io.JsonEncoder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.junit.jupiter.api.Test;

/**
 * The engine's wire format against Java Avro's single-object encoding, the reference implementation.
 *
 * <p>For every contract ({@code schemas/<contract>.avsc}) and every writer version ({@code current} and each
 * frozen {@code schemas/history/<contract>/vN.avsc}), Python ({@code tests/pricing_udfs/avro_interop.py})
 * wrote single-object messages and the same datums in Avro's JSON encoding to {@code <interop.dir>/python}.
 * Here a {@link BinaryMessageDecoder} over the current schema, with every frozen version added, must decode
 * each message into exactly the datum read from its JSON (writer schema resolved to the current one), and
 * its header must be C3 01 plus the writer schema's {@code parsingFingerprint64} in little-endian order. Each
 * record is then re-encoded with a {@link BinaryMessageEncoder} for its writer version into
 * {@code <interop.dir>/java}, with its JSON, for {@code tests/pricing_udfs/test_avro_interop.py}.
 */
class AvroInteropTest {

    private static final Path DIR = Paths.get(System.getProperty("interop.dir")).normalize();
    private static final Path SCHEMAS = Paths.get(System.getProperty("schemas.dir")).normalize();
    private static final String CURRENT = "current";

    @Test
    void crcMeetsTheSpecificationTestVectors() {
        assertEquals(0xc15d213aa4d7a795L, SchemaNormalization.fingerprint64(new byte[0]));
        assertEquals(7195948357588979594L,
                SchemaNormalization.fingerprint64("\"null\"".getBytes(StandardCharsets.UTF_8)));
        assertEquals(7195948357588979594L, SchemaNormalization.parsingFingerprint64(Schema.create(Schema.Type.NULL)));
    }

    @Test
    void decodesWhatPythonWroteAndWritesItBack() throws IOException {
        Path python = DIR.resolve("python");
        Path java = DIR.resolve("java");
        deleteTree(java); // never leave vectors for pytest that this run did not write
        assumeTrue(Files.isDirectory(python), () -> "no Python interop vectors in " + python + ": `make` (or `make jars`)"
                + " writes them with `python -m tests.pricing_udfs.avro_interop write " + DIR + "` before Maven runs");
        assertEquals(names(SCHEMAS, ".avsc"), names(python, ""), "contracts Python wrote");
        for (String contract : names(SCHEMAS, ".avsc")) {
            Map<String, Schema> writers = writerSchemas(contract);
            assertEquals(writers.keySet(), names(python.resolve(contract), ""), "versions Python wrote for " + contract);
            Schema current = writers.get(CURRENT);
            BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), current);
            writers.values().forEach(decoder::addSchema);
            for (Map.Entry<String, Schema> version : writers.entrySet()) {
                Schema writer = version.getValue();
                BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), writer);
                Path in = python.resolve(contract).resolve(version.getKey());
                Path out = Files.createDirectories(java.resolve(contract).resolve(version.getKey()));
                for (String n : names(in, ".bin")) {
                    String where = in.resolve(n + ".bin").toString();
                    byte[] message = Files.readAllBytes(in.resolve(n + ".bin"));
                    String json = Files.readString(in.resolve(n + ".json"));
                    assertEquals(hex(header(writer)), hex(Arrays.copyOf(message, 10)), where + ": header");
                    assertEquals(fromJson(json, writer, current), decoder.decode(message), where);

                    GenericRecord record = fromJson(json, writer, writer);
                    try (OutputStream bin = Files.newOutputStream(out.resolve(n + ".bin"))) {
                        encoder.encode(record, bin);
                    }
                    Files.writeString(out.resolve(n + ".json"), toJson(record, writer));
                }
            }
        }
    }

    /** C3 01 and the CRC-64-AVRO of the Parsing Canonical Form as 8 little-endian bytes (Avro specification). */
    private static byte[] header(Schema schema) {
        return ByteBuffer.allocate(10).order(ByteOrder.LITTLE_ENDIAN)
                .put((byte) 0xC3).put((byte) 0x01)
                .putLong(SchemaNormalization.parsingFingerprint64(schema))
                .array();
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder();
        for (byte b : bytes) {
            out.append(String.format("%02x ", b));
        }
        return out.toString().trim();
    }

    /** The current schema ("current") and every frozen version (by file stem) of one contract. */
    private static Map<String, Schema> writerSchemas(String contract) throws IOException {
        Map<String, Schema> out = new TreeMap<>();
        out.put(CURRENT, parse(SCHEMAS.resolve(contract + ".avsc")));
        Path history = SCHEMAS.resolve("history").resolve(contract);
        for (String version : Files.isDirectory(history) ? names(history, ".avsc") : new TreeSet<String>()) {
            out.put(version, parse(history.resolve(version + ".avsc")));
        }
        return out;
    }

    private static Schema parse(Path avsc) throws IOException {
        return new Schema.Parser().parse(Files.readString(avsc));
    }

    private static GenericRecord fromJson(String json, Schema writer, Schema reader) throws IOException {
        return new GenericDatumReader<GenericRecord>(writer, reader)
                .read(null, DecoderFactory.get().jsonDecoder(writer, json));
    }

    private static String toJson(GenericRecord record, Schema schema) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        JsonEncoder encoder = EncoderFactory.get().jsonEncoder(schema, out);
        new GenericDatumWriter<GenericRecord>(schema).write(record, encoder);
        encoder.flush();
        return out.toString(StandardCharsets.UTF_8);
    }

    /** Names in a folder ending with suffix, without it; "" lists the sub-folders. */
    private static TreeSet<String> names(Path folder, String suffix) throws IOException {
        try (Stream<Path> entries = Files.list(folder)) {
            return entries
                    .filter(p -> suffix.isEmpty() ? Files.isDirectory(p) : p.toString().endsWith(suffix))
                    .map(p -> p.getFileName().toString())
                    .map(name -> name.substring(0, name.length() - suffix.length()))
                    .collect(Collectors.toCollection(TreeSet::new));
        }
    }

    private static void deleteTree(Path root) throws IOException {
        if (!Files.exists(root)) {
            return;
        }
        List<Path> paths;
        try (Stream<Path> walk = Files.walk(root)) {
            paths = walk.sorted(Comparator.reverseOrder()).collect(Collectors.toCollection(ArrayList::new));
        }
        for (Path p : paths) {
            Files.delete(p);
        }
    }
}
