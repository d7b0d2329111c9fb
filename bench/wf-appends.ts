// Times appends to one run's log on the file workflow store (issue 12): each awaited before the next
// (one fdatasync each) against all issued at once (group commit), and one append carrying them all.
// A printed figure, not a test. Run: node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/wf-appends.ts [count]
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileWorkflowStore } from '../store/file-workflows.js'

const count = Number(process.argv[2] ?? 1000)
const dir = await mkdtemp(join(tmpdir(), 'kindling-wf-bench-'))
try {
  const store = await FileWorkflowStore.open({ dir })
  const rows: [string, number, number][] = []
  const time = async (label: string, id: string, work: () => Promise<unknown>): Promise<void> => {
    await store.createRun({ id, workflow: 'bench', version: 1, status: 'running', startedAt: new Date().toISOString() }, [])
    const syncs = store.logSyncs
    const t0 = process.hrtime.bigint()
    await work()
    rows.push([label, Number(process.hrtime.bigint() - t0) / 1e6, store.logSyncs - syncs])
  }
  const event = (i: number) => ({ type: 'item', i, output: { ok: true, n: i } })
  await time('sequential (awaited one by one)', 'seq', async () => { for (let i = 0; i < count; i++) await store.append('seq', 'me', [event(i)]) })
  await time('concurrent (all at once)', 'conc', () => Promise.all(Array.from({ length: count }, (_, i) => store.append('conc', 'me', [event(i)]))))
  await time('concurrent, 10 waves of count/10', 'waves', async () => {
    const waves: Promise<unknown>[] = []
    for (let w = 0; w < 10; w++) {
      waves.push(Promise.all(Array.from({ length: count / 10 }, (_, i) => store.append('waves', 'me', [event(w * (count / 10) + i)]))))
      await new Promise((r) => setImmediate(r))
    }
    await Promise.all(waves)
  })
  await time('one append of them all', 'one', () => store.append('one', 'me', Array.from({ length: count }, (_, i) => event(i))))
  await store.close()
  console.log(`${count} appends to one run (a store under ${tmpdir()}):`)
  for (const [label, ms, syncs] of rows) console.log(`  ${label.padEnd(34)} ${ms.toFixed(1).padStart(8)} ms  ${String(syncs).padStart(5)} fdatasync`)
} finally {
  await rm(dir, { recursive: true, force: true })
}
