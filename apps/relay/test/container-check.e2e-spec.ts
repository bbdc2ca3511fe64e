/**
 * The container: tools/container-check/run.mjs performs the Dockerfile's
 * build and runtime stages outside Docker (npm ci, build, production-only
 * install, the runtime user, the DATA_DIR volume) and starts the image's CMD
 * with its ENV; the HEALTHCHECK must pass and the relay must serve requests.
 * It always uses the image's default, the embedded database in the volume.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('../../../tools/container-check/run.mjs', import.meta.url));

function runContainerCheck(): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.DATABASE_URL;
    delete env.REDIS_URL;
    const child = spawn(process.execPath, [SCRIPT], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, output }));
  });
}

/**
 * The check ignores DATABASE_URL and REDIS_URL (the image's default is the
 * embedded database), so a run with them would repeat the run without them
 * byte for byte; CI runs both, and this spec runs in the one without.
 */
const describeOnce = process.env.DATABASE_URL ? describe.skip : describe;

describeOnce('container (Dockerfile performed outside Docker), in the run without DATABASE_URL', () => {
  // npm ci twice (all dependencies, then production ones) and a full build.
  it('builds, runs as a non-root user on HOST=0.0.0.0, passes its HEALTHCHECK and serves', async () => {
    const { code, output } = await runContainerCheck();
    if (code !== 0) console.log(output.slice(-4000));
    expect(code).toBe(0);
    expect(output).toContain('no development dependency');
    expect(output).toMatch(/starting node apps\/relay\/dist\/main\.js as \S+ \(uid [1-9]\d*\).*NODE_ENV=production, HOST=0\.0\.0\.0/);
    expect(output).toContain('container-check: HEALTHCHECK passed');
    expect(output).toContain('container-check: passed');
  }, 600_000);
});
