package pricing.features;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.function.Supplier;

import org.junit.jupiter.api.Test;

/**
 * The arrival-mode window functions against a brute-force recount after every row.
 *
 * <p>Rows come in arrival order with event times out of order (a random walk forward with jitter of up
 * to half a window either way, peers, and jumps right at the window's edge), as a processing-time OVER
 * window feeds them. After each row the window is [t - W, t] over the rows accumulated so far, where t
 * is that row's time: a row that arrived earlier with a later time is not in it.
 */
class ArrivalFunctionsTest {

    private static final long W = 1_000;
    /** Enough for the jitter: every row is within it of the newest row before it. */
    private static final long ALLOWANCE = 2 * W;

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
        long clock = 10 * W;
        long last = clock;
        for (int i = 0; i < n; i++) {
            int step = rng.nextInt(10);
            clock += step < 6 ? rng.nextInt(200) : step < 9 ? 0 : W - 1 + rng.nextInt(3);
            long t = rng.nextInt(4) == 0 ? last : clock - W / 2 + rng.nextInt((int) W); // peers, or out of order
            last = t;
            Long value = rng.nextInt(5) == 0 ? null : (long) rng.nextInt(50) - 10;
            out.add(new Row(t, value));
        }
        return out;
    }

    /** The non-null values of rows[0..i] with a time in [t - window, t] (window < 0: all up to t). */
    private static List<Long> window(List<Row> rows, int i, long window) {
        long t = rows.get(i).time;
        List<Long> out = new ArrayList<>();
        for (int j = 0; j <= i; j++) {
            Row r = rows.get(j);
            if (r.value != null && r.time <= t && (window < 0 || r.time >= t - window)) {
                out.add(r.value);
            }
        }
        return out;
    }

    private interface Replay {
        void row(List<Row> rows, int i, String where);
    }

    private static void replayEverySeed(Supplier<Replay> fresh) {
        for (long seed = 0; seed < 20; seed++) {
            List<Row> rows = rows(seed, 600);
            Replay replay = fresh.get();
            for (int i = 0; i < rows.size(); i++) {
                replay.row(rows, i, "seed " + seed + " row " + i);
            }
        }
    }

    @Test
    void countByMatchesABruteForceRecountOfTheRowsGroupAndKeepsOnlyTheAllowance() throws Exception {
        replayEverySeed(() -> {
            ArrivalCountBy f = new ArrivalCountBy();
            ArrivalCountBy.Acc acc = f.createAccumulator();
            long[] newest = {Long.MIN_VALUE};
            return (rows, i, where) -> {
                Row r = rows.get(i);
                String group = r.value == null ? null : "g" + Math.floorMod(r.value * 31 + r.time, 7);
                try {
                    f.accumulate(acc, r.time, group, r.value != null && r.value > 0, W, ALLOWANCE);
                } catch (Exception e) {
                    throw new AssertionError(where, e);
                }
                newest[0] = Math.max(newest[0], r.time);
                long n = 0;
                for (int j = 0; j <= i && group != null; j++) {
                    Row e = rows.get(j);
                    if (e.value != null && e.value > 0 && e.time <= r.time && e.time >= r.time - W
                            && group.equals("g" + Math.floorMod(e.value * 31 + e.time, 7))) {
                        n++;
                    }
                }
                assertEquals(group == null ? Map.of() : Map.of(group, n), f.getValue(acc), where);
                // what is kept: never an entry older than the horizon by more than the rows' spread
                try {
                    for (String g : acc.sorted.keys()) {
                        for (long t : acc.sorted.get(g)) {
                            assertTrue(t >= newest[0] - W - 2 * ALLOWANCE, where + ": kept " + t);
                        }
                    }
                } catch (Exception e) {
                    throw new AssertionError(where, e);
                }
            };
        });
    }

    /** What the accumulator keeps (cap, span): the defaults (little settles in these short runs), smaller, nothing. */
    private static final long[][] RECENT = {{ArrivalQueue.RECENT_CAP, ArrivalQueue.RECENT_MS}, {4, W / 4}, {0, 0}};

    @Test
    void countMatchesABruteForceRecount() {
        for (long[] recent : RECENT) {
            for (long w : new long[] {W, -1}) {
                replayEverySeed(() -> {
                    ArrivalCount f = new ArrivalCount((int) recent[0], recent[1]);
                    ArrivalQueue acc = f.createAccumulator();
                    return (rows, i, where) -> {
                        Row r = rows.get(i);
                        accumulate(() -> f.accumulate(acc, r.time, r.value != null && r.value > 0, w, ALLOWANCE), where);
                        long expected = window(rows, i, w).stream().filter(v -> v > 0).count();
                        assertEquals(expected, f.getValue(acc), where + " recent " + recent[0] + "/" + recent[1] + " window " + w);
                    };
                });
            }
        }
    }

    @Test
    void sumMatchesABruteForceRecount() {
        for (long[] recent : RECENT) {
            for (long w : new long[] {W, -1}) {
                replayEverySeed(() -> {
                    ArrivalSum f = new ArrivalSum((int) recent[0], recent[1]);
                    ArrivalQueue acc = f.createAccumulator();
                    return (rows, i, where) -> {
                        Row r = rows.get(i);
                        accumulate(() -> f.accumulate(acc, r.time, r.value == null ? null : r.value / 4.0, w, ALLOWANCE), where);
                        double expected = window(rows, i, w).stream().mapToDouble(v -> v / 4.0).sum();
                        assertEquals(expected, f.getValue(acc), 1e-9, where + " recent " + recent[0] + "/" + recent[1] + " window " + w);
                    };
                });
            }
        }
    }

    private interface Step {
        void run() throws Exception;
    }

    private static void accumulate(Step step, String where) {
        try {
            step.run();
        } catch (Exception e) {
            throw new AssertionError(where, e);
        }
    }

    @Test
    void minMatchesABruteForceRecountAndIsNullOnAnEmptyWindow() {
        replayEverySeed(() -> {
            ArrivalMin f = new ArrivalMin();
            ArrivalMin.Acc acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                f.accumulate(acc, r.time, r.value, W, ALLOWANCE);
                assertEquals(window(rows, i, W).stream().min(Long::compare).orElse(null), f.getValue(acc), where);
            };
        });
        ArrivalMin f = new ArrivalMin();
        ArrivalMin.Acc acc = f.createAccumulator();
        f.accumulate(acc, 5_000L, 5L, W, ALLOWANCE);
        f.accumulate(acc, 4_000L, null, W, ALLOWANCE); // earlier than the only entry: nothing in its window
        assertNull(f.getValue(acc));
    }

    @Test
    void distinctMatchesABruteForceRecount() {
        replayEverySeed(() -> {
            ArrivalDistinct f = new ArrivalDistinct();
            ArrivalDistinct.Acc acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                f.accumulate(acc, r.time, r.value == null ? null : "p" + (r.value % 7), W, ALLOWANCE);
                Set<Long> keys = new HashSet<>();
                window(rows, i, W).forEach(v -> keys.add(v % 7));
                assertEquals((long) keys.size(), f.getValue(acc), where);
            };
        });
    }

    @Test
    void lastIsTheLatestByEventTimeAtOrBeforeTheRowTiesByArrival() {
        replayEverySeed(() -> {
            ArrivalLastLong f = new ArrivalLastLong();
            ArrivalLatest acc = f.createAccumulator();
            ArrivalLastString g = new ArrivalLastString();
            ArrivalLatest sacc = g.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                f.accumulate(acc, r.time, r.value, ALLOWANCE);
                g.accumulate(sacc, r.time, r.value == null ? null : "v" + r.value, ALLOWANCE);
                Row best = null;
                for (int j = 0; j <= i; j++) {
                    Row e = rows.get(j);
                    if (e.value != null && e.time <= r.time && (best == null || e.time >= best.time)) {
                        best = e;
                    }
                }
                assertEquals(best == null ? null : best.value, f.getValue(acc), where);
                assertEquals(best == null ? null : "v" + best.value, g.getValue(sacc), where);
            };
        });
    }

    @Test
    void lastKeepsTheLatestEntryThatLeft() {
        ArrivalLastLong f = new ArrivalLastLong();
        ArrivalLatest acc = f.createAccumulator();
        f.accumulate(acc, 1_000L, 7L, 100L);
        f.accumulate(acc, 1_050L, 8L, 100L);
        f.accumulate(acc, 100_000L, null, 100L); // both leave the buffer; the later one is kept as the base
        assertEquals(0, acc.size());
        assertEquals(8L, f.getValue(acc));
        f.accumulate(acc, 99_950L, 9L, 100L);
        f.accumulate(acc, 99_900L, null, 100L); // before the entry at 99,950: the base still answers
        assertEquals(8L, f.getValue(acc));
    }

    @Test
    void repeatsCountEarlierArrivalsOfTheKeyWithinTheWindowEitherSide() {
        replayEverySeed(() -> {
            ArrivalRepeats f = new ArrivalRepeats();
            ArrivalRepeats.Acc acc = f.createAccumulator();
            return (rows, i, where) -> {
                Row r = rows.get(i);
                String key = r.value == null ? null : "r" + (r.value % 7);
                f.accumulate(acc, r.time, key, W, ALLOWANCE);
                long expected = 0;
                for (int j = 0; j < i && key != null; j++) {
                    Row e = rows.get(j);
                    if (e.value != null && e.value % 7 == r.value % 7 && Math.abs(e.time - r.time) <= W) {
                        expected++;
                    }
                }
                assertEquals(expected, f.getValue(acc), where);
            };
        });
    }

    @Test
    void aLaterEventThatArrivedFirstIsNotCountedAndTheLowerEdgeIsIn() throws Exception {
        ArrivalCount f = new ArrivalCount();
        ArrivalQueue acc = f.createAccumulator();
        f.accumulate(acc, 10_000L, true, W, ALLOWANCE); // arrives first, later event time
        f.accumulate(acc, 9_000L, true, W, ALLOWANCE);
        f.accumulate(acc, 8_999L, true, W, ALLOWANCE);
        f.accumulate(acc, 9_999L, false, W, ALLOWANCE); // a request at 9,999: 9,000 and 8,999 are in, 10,000 is not
        assertEquals(2L, f.getValue(acc));
        f.accumulate(acc, 10_000L, false, W, ALLOWANCE); // at 10,000: 9,000 (exactly W before) and 10,000
        assertEquals(2L, f.getValue(acc));
        f.accumulate(acc, null, true, W, ALLOWANCE);
        assertEquals(2L, f.getValue(acc));
    }

    @Test
    void stateIsBoundedByTheWindowAndTheAllowance() throws Exception {
        ArrivalSum f = new ArrivalSum();
        ArrivalQueue acc = f.createAccumulator();
        ArrivalCount c = new ArrivalCount();
        ArrivalQueue all = c.createAccumulator();
        for (long t = 0; t < 100_000; t += 10) {
            f.accumulate(acc, t, 1.0, W, ALLOWANCE);
            c.accumulate(all, t, true, -1L, ALLOWANCE);
        }
        assertEquals((W + ALLOWANCE) / 10 + 1, acc.size(), 1.0);
        assertEquals(W / 10 + 1, f.getValue(acc), 1e-9);
        assertEquals(ALLOWANCE / 10 + 1, all.size(), 1.0);
        assertEquals(10_000L, c.getValue(all)); // all history: what left is still counted
    }

    @Test
    void theAccumulatorItselfHoldsOnlyTheRecentEntriesTheRestIsInKeyedState() throws Exception {
        long window = 20 * ArrivalQueue.RECENT_MS;
        ArrivalCount c = new ArrivalCount();
        ArrivalQueue acc = c.createAccumulator();
        for (long t = 0; t < 3 * window; t += 10) {
            c.accumulate(acc, t, true, window, ALLOWANCE);
            c.accumulate(acc, t - ALLOWANCE / 2, true, window, ALLOWANCE); // a second input, behind by half the allowance
        }
        assertEquals(2 * (window / 10) + 1, c.getValue(acc), 1.0);
        // what the state backend deserialises on every row: the last RECENT_MS of entries (both inputs'), none late
        // (the second input is less than RECENT_MS behind); the rest of the window is in keyed state
        assertTrue(acc.recentTimes.length <= 2 * (ArrivalQueue.RECENT_MS / 10 + 1), "recent " + acc.recentTimes.length);
        assertEquals(0, acc.lateTimes.length);
        assertTrue(acc.tail - acc.head >= window / 10, "settled " + (acc.tail - acc.head));
        // a quiet key (fewer entries than the cap in its window) never touches keyed state
        ArrivalQueue quiet = c.createAccumulator();
        for (long t = 0; t < 3 * window; t += window / 20) {
            c.accumulate(quiet, t, true, window, ALLOWANCE);
        }
        assertEquals(21L, c.getValue(quiet));
        assertEquals(0, quiet.tail);
    }
}
