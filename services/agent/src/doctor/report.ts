/** The doctor's table: one line per check, then the fix for each problem. */
import type { CheckResult } from './checks.js';

const MARK: Record<CheckResult['status'], string> = {
  ok: 'ok',
  warn: 'WARN',
  fail: 'FAIL',
  skip: 'skip',
};

export function formatReport(results: readonly CheckResult[]): string {
  const width = Math.max(5, ...results.map((r) => r.check.length));
  const lines = [`${'check'.padEnd(width)}  state  detail`, `${'-'.repeat(width)}  -----  ------`];
  for (const result of results) {
    lines.push(`${result.check.padEnd(width)}  ${MARK[result.status].padEnd(5)}  ${result.detail}`);
  }
  const problems = results.filter((r) => r.fix !== undefined && r.status !== 'ok');
  if (problems.length > 0) {
    lines.push('', 'to fix:');
    for (const problem of problems) {
      lines.push(`- ${problem.check}: ${problem.fix ?? ''}`);
    }
  }
  const failed = results.filter((r) => r.status === 'fail').length;
  const warned = results.filter((r) => r.status === 'warn').length;
  lines.push(
    '',
    failed === 0
      ? `no failures${warned > 0 ? `, ${String(warned)} warning(s)` : ''}`
      : `${String(failed)} check(s) failed`,
  );
  return `${lines.join('\n')}\n`;
}
