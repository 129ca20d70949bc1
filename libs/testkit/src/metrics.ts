/** Reads a service's Prometheus /metrics once, with a timeout, and answers several questions. */
import { getText } from './http-get.js';

export interface MetricsSnapshot {
  /** One counter or gauge, summed over the label sets that carry every label in `labels`. */
  get(name: string, labels?: Record<string, string>): number;
  /** True when the metric is registered (a `# TYPE` line), even with no sample yet. */
  has(name: string): boolean;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$/;

/** `ca`: the PEM CA to trust when `baseUrl` is `https://` with a test CA's certificate. */
export async function scrapeMetrics(
  baseUrl: string,
  timeoutMs = 10_000,
  ca?: Buffer,
): Promise<MetricsSnapshot> {
  const response = await getText(`${baseUrl}/metrics`, {
    timeoutMs,
    ...(ca === undefined ? {} : { ca }),
  });
  if (response.status !== 200) {
    throw new Error(`${baseUrl}/metrics: HTTP ${response.status}`);
  }
  const samples: { name: string; labels: string; value: number }[] = [];
  const families = new Set<string>();
  for (const line of response.body.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      families.add(line.split(' ')[2] ?? '');
    }
    const match = SAMPLE.exec(line);
    if (match?.[1] !== undefined && match[3] !== undefined) {
      samples.push({ name: match[1], labels: match[2] ?? '', value: Number(match[3]) });
    }
  }
  return {
    get: (name, labels = {}) =>
      samples
        .filter(
          (s) =>
            s.name === name &&
            Object.entries(labels).every(([k, v]) => s.labels.includes(`${k}="${v}"`)),
        )
        .reduce((sum, s) => sum + s.value, 0),
    has: (name) => families.has(name),
  };
}
