package pricing.features;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.function.Supplier;

import org.junit.jupiter.api.Test;

/**
 * The window functions against a brute-force recount of the window after every row.
 *
 * <p>Rows come in event-time order with many peers (equal times) and gaps near the window length,
 * as Flink feeds an event-time OVER window; after each row the window is [t - W, t] over the rows
 * accumulated so far, where t is that row's time.
 */
class WindowFunctionsTest {

    private static final long W = 1_000;

    /** One input row: its event time and its value (null: the row does not count). */
    private static final class Row {
        final long time;
        final Long value;

        Row(long time, Long value) {
            this.time = time;
            this.value = value;
        }
    }

    private static List<Row> rows(long seed, int n) {
        Random rng = new Random(seed);
        List<Row> out = new ArrayList<>();
        long t = 0;
        for (int i = 0; i < n; i++) {
            int step = rng.nextInt(10);
            if (step < 3) {
                t += 0; // a peer
            } else if (step < 9) {
                t += rng.nextInt(300);
            } else {
                t += W - 1 + rng.nextInt(3); // right at the window's edge
            }
            Long value = rng.nextInt(5) == 0 ? null : (long) rng.nextInt(50) - 10;
            out.add(new Row(t, value));
        }
        return out;
    }

    /** The non-null values in [t - W, t] among rows[0..i]. */
    private static List<Long> window(List<Row> rows, int i) {
        long t = rows.get(i).time;
        List<Long> out = new ArrayList<>();
        for (int j = 0; j <= i; j++) {
            Row r = rows.get(j);
            if (r.value != null && r.time >= t - W) {
                out.add(r.value);
            }
        }
        return out;
    }

    /** Feeds one function, row by row, and checks it after each row; {@code where} names the row in failures. */
    private interface Replay {
        void row(List<Row> rows, int i, String where) throws Exception;
    }

    /** 20 seeded row sequences, each into a fresh function and accumulator from {@code fresh}. */
    private static void replayEverySeed(Supplier<Replay> fresh) throws Exception {
        for (long seed = 0; seed < 20; seed++) {
            List<Row> rows = rows(seed, 400);
            Replay replay = fresh.get();
            for (int i = 0; i < rows.size(); i++) {
                replay.row(rows, i, "seed " + seed + " row " + i);
            }
        }
    }

    @Test
    void countMatchesABruteForceRecount() throws Exception {
        replayEverySeed(() -> {
            WindowedCount f = new WindowedCount();
            TimeQueue acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                f.accumulate(acc, r.time, r.value != null && r.value > 0, W);
                assertEquals(window(rows, i).stream().filter(v -> v > 0).count(), f.getValue(acc), where);
            };
        });
    }

    @Test
    void sumMatchesABruteForceRecount() throws Exception {
        replayEverySeed(() -> {
            WindowedSum f = new WindowedSum();
            WindowedSum.Acc acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                f.accumulate(acc, r.time, r.value == null ? null : r.value / 4.0, W);
                assertEquals(window(rows, i).stream().mapToDouble(v -> v / 4.0).sum(), f.getValue(acc), 1e-9, where);
            };
        });
    }

    @Test
    void minMatchesABruteForceRecountAndIsNullOnAnEmptyWindow() throws Exception {
        replayEverySeed(() -> {
            WindowedMin f = new WindowedMin();
            WindowedMin.Acc acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                f.accumulate(acc, r.time, r.value, W);
                assertEquals(window(rows, i).stream().min(Long::compare).orElse(null), f.getValue(acc), where);
            };
        });
        WindowedMin f = new WindowedMin();
        WindowedMin.Acc acc = f.createAccumulator();
        f.accumulate(acc, 0L, 5L, W);
        f.accumulate(acc, W + 1, null, W);
        assertNull(f.getValue(acc));
    }

    @Test
    void distinctMatchesABruteForceRecount() throws Exception {
        replayEverySeed(() -> {
            WindowedDistinct f = new WindowedDistinct();
            WindowedDistinct.Acc acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                f.accumulate(acc, r.time, r.value == null ? null : "p" + (r.value % 7), W);
                Set<Long> keys = new HashSet<>();
                window(rows, i).forEach(v -> keys.add(v % 7));
                assertEquals((long) keys.size(), f.getValue(acc), where);
            };
        });
    }

    @Test
    void repeatsCountTheEarlierCopiesOfTheRowsKeyInTheWindow() throws Exception {
        replayEverySeed(() -> {
            WindowedRepeats f = new WindowedRepeats();
            WindowedRepeats.Acc acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                String key = r.value == null ? null : "r" + (r.value % 7);
                f.accumulate(acc, r.time, key, W);
                long expected = 0;
                for (int j = 0; j < i && key != null; j++) {
                    Row e = rows.get(j);
                    if (e.value != null && e.value % 7 == r.value % 7 && e.time >= r.time - W) {
                        expected++;
                    }
                }
                assertEquals(expected, f.getValue(acc), where);
            };
        });
    }

    @Test
    void countByMatchesABruteForceRecountPerGroupAndForgetsGroupsThatLeft() throws Exception {
        replayEverySeed(() -> {
            WindowedCountBy f = new WindowedCountBy();
            WindowedCountBy.Acc acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                String group = group(r);
                f.accumulate(acc, r.time, group, r.value != null && r.value > 0, W);
                // every group of the rows at this time so far, each with its count in [t - W, t]
                Map<String, Long> expected = new HashMap<>();
                for (int j = i; j >= 0 && rows.get(j).time == r.time; j--) {
                    String g = group(rows.get(j));
                    if (g != null) {
                        expected.put(g, 0L);
                    }
                }
                Set<String> live = new HashSet<>();
                for (int j = 0; j <= i; j++) {
                    Row e = rows.get(j);
                    String g = group(e);
                    if (g != null && e.value > 0 && e.time >= r.time - W) {
                        expected.computeIfPresent(g, (k, n) -> n + 1);
                        live.add(g);
                    }
                }
                assertEquals(expected, f.getValue(acc), where);
                Set<String> kept = new HashSet<>();
                acc.counts.keys().forEach(kept::add);
                assertEquals(live, kept, where + ": the counts hold exactly the groups with entries in the window");
            };
        });
    }

    /** A row's group for the grouped functions: one of 7 (null when the row has no value). */
    private static String group(Row r) {
        return r.value == null ? null : "g" + Math.floorMod(r.value * 31 + r.time, 7);
    }

    @Test
    void theWindowIncludesItsLowerEdgeAndNothingBefore() throws Exception {
        WindowedCount f = new WindowedCount();
        TimeQueue acc = f.createAccumulator();
        f.accumulate(acc, 99L, true, W);
        f.accumulate(acc, 100L, true, W);
        f.accumulate(acc, 100L + W, true, W); // 100 is exactly W before: in; 99 is out
        assertEquals(2L, f.getValue(acc));
        f.accumulate(acc, null, true, W); // a row without a time changes nothing
        assertEquals(2L, f.getValue(acc));
    }
}
