/** Plain-text figures and tables for reports (the benchmark, the local demo). */

const MiB = 1024 * 1024;

export function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

export function seconds(value: number): string {
  return `${value.toFixed(2)} s`;
}

export function ratio(value: number): string {
  return Number.isFinite(value) ? value.toFixed(2) : '-';
}

export function percent(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)} %` : '-';
}

/**
 * Lays out rows under a header: the first column left-aligned, the others right-aligned, two
 * spaces apart. A row of `null` prints a rule.
 */
export function table(
  header: readonly string[],
  rows: readonly (readonly string[] | null)[],
): string {
  const all = [header, ...rows.filter((r): r is readonly string[] => r !== null)];
  const widths = header.map((_, i) => Math.max(...all.map((row) => (row[i] ?? '').length)));
  const line = (row: readonly string[]): string =>
    widths
      .map((width, i) => {
        const cell = row[i] ?? '';
        return i === 0 ? cell.padEnd(width) : cell.padStart(width);
      })
      .join('  ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(header), rule, ...rows.map((row) => (row === null ? rule : line(row)))].join('\n');
}
