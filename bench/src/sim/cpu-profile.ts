/**
 * A preload (`NODE_OPTIONS=--import <this file>`) that profiles a whole process with V8's
 * sampling profiler and writes `<pid>.cpuprofile` into `SHOAL_SIM_CPU_PROF_DIR` when it exits:
 * Node refuses `--cpu-prof` in NODE_OPTIONS, and the simulator starts trackers through the
 * test kit, which passes the environment only. Open the file in Chrome DevTools or summarise
 * it by function.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

const dir = process.env.SHOAL_SIM_CPU_PROF_DIR;
if (dir !== undefined && dir !== '') {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.start');
  // An in-process session answers synchronously, so the profile is written before exit.
  process.on('exit', () => {
    session.post('Profiler.stop', (error, result) => {
      if (error === null) {
        writeFileSync(
          join(dir, `${String(process.pid)}.cpuprofile`),
          JSON.stringify(result.profile),
        );
      }
    });
  });
}
