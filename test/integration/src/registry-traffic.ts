/** Helpers for the tests that pull with containerd and watch what reached the registry. */
import { stat } from 'node:fs/promises';

import type { Registry, RegistryRequest } from '@shoal/testkit';

/** Whether `path` exists. */
export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** What the registry served while `action` ran. */
export async function trafficDuring(
  registry: Registry,
  action: () => Promise<unknown>,
): Promise<RegistryRequest[]> {
  const mark = (await registry.requests()).length;
  await action();
  return (await registry.requests()).slice(mark);
}
