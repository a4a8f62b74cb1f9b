package pricing.recommend;

import java.util.ArrayList;
import java.util.Arrays;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.types.Row;

/**
 * Gathers the featured candidate rows of one recommend request into its slate: an aggregate over a
 * processing-time {@code ROWS} frame partitioned by the request id, which returns NULL until it has seen
 * every one of the request's {@code size} candidates (by {@code index}, 1-based, each counted once) and
 * then the whole slate, in candidate order, once; after that the key starts afresh (a repeated request id
 * gathers again). Only the rows of one request are held, until it is complete.
 *
 * <p>The slate is a ROW of parallel arrays: product ids, list currencies, candidate scores, candidate
 * reasons, and the feature vectors flattened in candidate order ({@code size * n_features} values).
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = CollectSlate.Acc.class),
        output = @DataTypeHint(
                "ROW<product_ids ARRAY<STRING>, currencies ARRAY<STRING>, scores ARRAY<DOUBLE>,"
                        + " reasons ARRAY<STRING>, features ARRAY<DOUBLE>>"))
public class CollectSlate extends AggregateFunction<Row, CollectSlate.Acc> {

    /** The candidates seen so far (by index), and the finished slate of the last row, if it finished one. */
    public static class Acc implements java.io.Serializable {
        public int size;
        public int seen;
        public String[] products;
        public String[] currencies;
        public Double[] scores;
        public String[] reasons;
        public Double[][] features;
        public Row done;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Integer size, Integer index, String product, String currency, Double score,
            String reasons, @DataTypeHint("ARRAY<DOUBLE>") Double[] features) {
        acc.done = null;
        if (size == null || index == null || size <= 0 || index < 1 || index > size) {
            return;
        }
        if (acc.products == null || acc.size != size) { // a new slate (or a copy of the request with another size)
            acc.size = size;
            acc.seen = 0;
            acc.products = new String[size];
            acc.currencies = new String[size];
            acc.scores = new Double[size];
            acc.reasons = new String[size];
            acc.features = new Double[size][];
        }
        int i = index - 1;
        if (acc.products[i] == null) {
            acc.seen++;
        }
        acc.products[i] = product == null ? "" : product;
        acc.currencies[i] = currency;
        acc.scores[i] = score;
        acc.reasons[i] = reasons;
        acc.features[i] = features == null ? new Double[0] : features;
        if (acc.seen < size) {
            return;
        }
        ArrayList<Double> flat = new ArrayList<>();
        for (Double[] f : acc.features) {
            flat.addAll(Arrays.asList(f));
        }
        acc.done = Row.of(acc.products, acc.currencies, acc.scores, acc.reasons, flat.toArray(new Double[0]));
        acc.products = null;
        acc.currencies = null;
        acc.scores = null;
        acc.reasons = null;
        acc.features = null;
        acc.seen = 0;
        acc.size = 0;
    }

    @Override
    public Row getValue(Acc acc) {
        return acc.done;
    }
}
