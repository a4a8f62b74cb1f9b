package pricing.archive;

import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import org.apache.flink.api.common.serialization.BulkWriter;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.connector.file.table.factories.BulkWriterFormatFactory;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.EncodingFormat;
import org.apache.flink.table.connector.sink.DynamicTableSink;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.factories.FactoryUtil;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalTypeRoot;

/**
 * {@code 'format' = 'contract-avro'} for Flink's FileSystem SQL connector: a table of one column, the raw Kafka
 * value ({@code BYTES}, single-object encoded), written as Avro object container files of the contract's current
 * schema. Each value is decoded by {@link pricing.decode.ContractDecoder} (every frozen writer version resolved to
 * the current one, the {@code .avsc} rules checked); a value that does not decode is left out and counted (the
 * pricing job dead-letters it, and the dead-letter topic is archived too).
 *
 * <p>Options: {@code contract-avro.contract} (its name, for messages), {@code contract-avro.schema} (the current
 * {@code .avsc} as JSON), {@code contract-avro.writer-schemas} (the frozen versions, JSON texts one per line) and
 * {@code contract-avro.codec} ({@code deflate}, the default, or {@code null}). The schemas come from
 * {@code pricing_udfs.serde}, the one reader of the {@code .avsc} files.
 *
 * <p>Guarantee: the FileSystem sink keeps each file hidden ({@code .part-...}) until the checkpoint that covers its
 * records completes, and rolls bulk files on every checkpoint; with the Kafka source's offsets in the same checkpoint
 * a restart after any crash writes every record exactly once into visible files.
 */
public final class ContractAvroFormatFactory implements BulkWriterFormatFactory {
    public static final String IDENTIFIER = "contract-avro";

    static final ConfigOption<String> CONTRACT = ConfigOptions.key("contract").stringType().noDefaultValue()
            .withDescription("the contract's name");
    static final ConfigOption<String> SCHEMA = ConfigOptions.key("schema").stringType().noDefaultValue()
            .withDescription("the current schema, JSON");
    static final ConfigOption<String> WRITER_SCHEMAS = ConfigOptions.key("writer-schemas").stringType()
            .defaultValue("").withDescription("frozen writer schemas, one JSON text per line");
    static final ConfigOption<String> CODEC = ConfigOptions.key("codec").stringType().defaultValue("deflate")
            .withDescription("deflate or null");

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        return new HashSet<>(Arrays.asList(CONTRACT, SCHEMA));
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        return new HashSet<>(Arrays.asList(WRITER_SCHEMAS, CODEC));
    }

    @Override
    public EncodingFormat<BulkWriter.Factory<RowData>> createEncodingFormat(DynamicTableFactory.Context context,
            ReadableConfig options) {
        FactoryUtil.validateFactoryOptions(this, options);
        String codec = options.get(CODEC);
        if (!codec.equals("deflate") && !codec.equals("null")) {
            throw new ValidationException("contract-avro.codec must be deflate or null, not " + codec);
        }
        String contract = options.get(CONTRACT);
        String schema = options.get(SCHEMA);
        String writers = options.get(WRITER_SCHEMAS);
        List<String> writerSchemas = writers.isEmpty() ? Collections.emptyList() : Arrays.asList(writers.split("\n"));
        return new EncodingFormat<BulkWriter.Factory<RowData>>() {
            @Override
            public BulkWriter.Factory<RowData> createRuntimeEncoder(DynamicTableSink.Context sinkContext, DataType type) {
                List<DataType> fields = DataType.getFieldDataTypes(type);
                if (fields.size() != 1 || fields.get(0).getLogicalType().getTypeRoot() != LogicalTypeRoot.VARBINARY) {
                    throw new ValidationException("contract-avro writes tables of one BYTES column (the Kafka value) "
                            + "besides the partition columns, not " + type);
                }
                return new ContractAvroWriter(contract, schema, writerSchemas, codec);
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }
}
