/**
 * Prometheus histograms read from several processes' scrapes: their buckets summed, and the
 * bound within which a share of the observations fell.
 */
import type { MetricsSnapshot } from '@shoal/testkit';

/** One histogram: the count at or under each bound (cumulative), the count and the sum. */
export interface HistogramFigures {
  readonly bounds: readonly number[];
  readonly cumulative: readonly number[];
  readonly count: number;
  readonly sum: number;
}

/**
 * `name`'s histogram for `labels`, summed over `scrapes`, at `bounds` (the bounds the
 * processes were built with; one they do not report reads as 0).
 */
export function readHistogram(
  scrapes: readonly MetricsSnapshot[],
  name: string,
  labels: Record<string, string>,
  bounds: readonly number[],
): HistogramFigures {
  const total = (metric: string, extra: Record<string, string> = {}): number =>
    scrapes.reduce((sum, m) => sum + m.get(metric, { ...labels, ...extra }), 0);
  return {
    bounds,
    cumulative: bounds.map((le) => total(`${name}_bucket`, { le: String(le) })),
    count: total(`${name}_count`),
    sum: total(`${name}_sum`),
  };
}

/**
 * The smallest bound within which a `q` share of the observations fell: Infinity past the
 * last bound, NaN with none. A bound read as 0 makes it err high, never low.
 */
export function boundWithin(histogram: HistogramFigures, q: number): number {
  if (!(histogram.count > 0)) {
    return Number.NaN;
  }
  for (const [i, bound] of histogram.bounds.entries()) {
    if ((histogram.cumulative[i] ?? 0) >= q * histogram.count) {
      return bound;
    }
  }
  return Number.POSITIVE_INFINITY;
}
