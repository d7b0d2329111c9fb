import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { CgroupLocator, bareContainerId, containerOfDir, podOfDir } from '../../agent/locate.js'

// Fabricated cgroup trees (plain directories) as real nodes lay them out, for both kubelet cgroup drivers and both
// cgroup versions: the locator finds a pod by its UID and its containers by their ids, in one walk per batch.

const UID_A = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'
const UID_B = '11111111-2222-3333-4444-555555555555'
const UID_C = 'abcdef01-2345-6789-abcd-ef0123456789'
const CID_1 = 'a'.repeat(64)
const CID_2 = `${'b'.repeat(32)}${'c'.repeat(32)}`
const CID_3 = '0123456789abcdef'.repeat(4)
const us = (uid: string): string => uid.replace(/-/g, '_')

async function tree(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-locate-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

async function dirs(root: string, paths: string[]): Promise<void> {
  for (const p of paths) await mkdir(join(root, p), { recursive: true })
}

t.test('cgroup v1, cgroupfs driver: kubepods/<qos>/pod<uid>/<container id> in the cpu,cpuacct, memory and pids hierarchies', async (t) => {
  const root = await tree(t)
  const pods = [
    `kubepods/burstable/pod${UID_A}/${CID_1}`, `kubepods/burstable/pod${UID_A}/${CID_2}`,
    `kubepods/pod${UID_B}/${CID_3}`, `kubepods/besteffort/pod${UID_C}`,
    'system.slice/containerd.service', 'user.slice',
  ]
  for (const h of ['cpu,cpuacct', 'memory', 'pids']) await dirs(join(root, h), pods)
  await symlink('cpu,cpuacct', join(root, 'cpu'))
  await symlink('cpu,cpuacct', join(root, 'cpuacct'))
  const loc = new CgroupLocator({ root })
  const a = await loc.locate(UID_A, [UID_B])
  t.ok(a, 'found')
  t.equal(a?.driver, 'cgroupfs')
  t.equal(a?.path, `kubepods/burstable/pod${UID_A}`)
  t.same(a?.pod, {
    version: 1,
    paths: {
      cpu: join(root, 'cpu,cpuacct', a?.path ?? ''), cpuacct: join(root, 'cpu,cpuacct', a?.path ?? ''),
      memory: join(root, 'memory', a?.path ?? ''), pids: join(root, 'pids', a?.path ?? ''),
    },
  })
  t.same([...(a?.containers.keys() ?? [])].sort(), [CID_1, CID_2].sort(), 'both containers')
  t.equal(a?.containers.get(CID_1)?.paths['memory'], join(root, 'memory', `kubepods/burstable/pod${UID_A}/${CID_1}`))
  const walks = loc.walks
  const b = await loc.locate(UID_B)
  t.equal(b?.path, `kubepods/pod${UID_B}`, 'a Guaranteed pod sits directly under kubepods')
  t.equal(loc.walks, walks, 'found by the same walk (a batch costs one)')
  const c = await loc.locate(UID_C)
  t.equal(c?.path, `kubepods/besteffort/pod${UID_C}`)
  t.equal(c?.containers.size, 0)
  t.equal(await loc.locate('99999999-9999-9999-9999-999999999999'), undefined, 'an unknown pod: undefined')
})

t.test('cgroup v2, systemd driver: kubepods-<qos>-pod<uid_>.slice with cri-containerd-<id>.scope and docker-<id>.scope', async (t) => {
  const root = await tree(t)
  await writeFile(join(root, 'cgroup.controllers'), 'cpuset cpu io memory pids\n')
  await dirs(root, [
    `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${us(UID_A)}.slice/cri-containerd-${CID_1}.scope`,
    `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${us(UID_A)}.slice/cri-containerd-${CID_2}.scope`,
    `kubepods.slice/kubepods-pod${us(UID_B)}.slice/docker-${CID_3}.scope`,
    `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${us(UID_C)}.slice/crio-${CID_3}.scope`,
    'system.slice/kubelet.service', 'init.scope',
  ])
  const loc = new CgroupLocator({ root })
  const a = await loc.locate(UID_A)
  t.equal(a?.driver, 'systemd')
  const podDir = join(root, `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${us(UID_A)}.slice`)
  t.same(a?.pod, { version: 2, paths: { unified: podDir } })
  t.same(a?.containers.get(CID_1), { version: 2, paths: { unified: join(podDir, `cri-containerd-${CID_1}.scope`) } })
  t.equal(a?.containers.size, 2)
  const b = await loc.locate(UID_B)
  t.equal(b?.path, `kubepods.slice/kubepods-pod${us(UID_B)}.slice`, 'Guaranteed: directly under kubepods.slice')
  t.same([...(b?.containers.keys() ?? [])], [CID_3], 'a docker-<id>.scope container')
  t.same([...((await loc.locate(UID_C))?.containers.keys() ?? [])], [CID_3], 'a crio-<id>.scope container')
})

t.test('cached per UID, forgotten when its group goes; a container that restarts is seen under its new id', async (t) => {
  const root = await tree(t)
  await writeFile(join(root, 'cgroup.controllers'), 'cpu memory pids\n')
  const pod = `kube-sim/1234abcd/kindling-runtime-0/kubepods/burstable/pod${UID_A}`
  await dirs(root, [`${pod}/${CID_1}`])
  const loc = new CgroupLocator({ root })
  t.ok(await loc.locate(UID_A), 'found six levels down (the stand-in\'s parent)')
  t.equal(loc.walks, 1)
  await rm(join(root, pod, CID_1), { recursive: true })
  await mkdir(join(root, pod, CID_2))
  t.same([...((await loc.locate(UID_A))?.containers.keys() ?? [])], [CID_2], 'the new container id')
  t.equal(loc.walks, 1, 'from the cache: no walk')
  t.equal(loc.cached, 1)
  await rm(join(root, pod), { recursive: true })
  t.equal(await loc.locate(UID_A), undefined, 'gone: undefined')
  t.equal(loc.cached, 0, 'and forgotten')
  t.equal(loc.walks, 2, 'looked for again before giving up')
})

t.test('the walk is bounded: depth and directories', async (t) => {
  const root = await tree(t)
  await writeFile(join(root, 'cgroup.controllers'), 'cpu memory pids\n')
  await dirs(root, [`a/b/c/d/e/f/g/h/i/j/k/pod${UID_A}`])
  t.equal(await new CgroupLocator({ root }).locate(UID_A), undefined, 'deeper than 10 levels: not found')
  t.ok(await new CgroupLocator({ root, maxDepth: 12 }).locate(UID_A), 'found with a deeper bound')
  t.equal(await new CgroupLocator({ root, maxDepth: 12, maxDirs: 5 }).locate(UID_A), undefined, 'not within 5 directories')
  await t.rejects(new CgroupLocator({ root }).locate('../../etc'), { code: 'KDL_ERR_BAD_REQUEST' }, 'a UID is a UID')
  await t.rejects(new CgroupLocator({ root: join(root, 'a') }).locate(UID_A), { code: 'KDL_ERR_BACKEND' }, 'no hierarchy there')
})

t.test('names', async (t) => {
  t.same(podOfDir(`pod${UID_A}`), { uid: UID_A, driver: 'cgroupfs' })
  t.same(podOfDir(`kubepods-burstable-pod${us(UID_A)}.slice`), { uid: UID_A, driver: 'systemd' })
  t.same(podOfDir(`kubepods-pod${us(UID_A)}.slice`), { uid: UID_A, driver: 'systemd' })
  t.equal(podOfDir('kubepods-burstable.slice'), undefined)
  t.equal(containerOfDir(`cri-containerd-${CID_1}.scope`), CID_1)
  t.equal(containerOfDir(`docker-${CID_1}.scope`), CID_1)
  t.equal(containerOfDir(CID_1), CID_1)
  t.equal(containerOfDir('burstable'), undefined)
  t.equal(bareContainerId(`containerd://${CID_1}`), CID_1)
  t.equal(bareContainerId(`docker://${CID_1}`), CID_1)
  t.throws(() => bareContainerId('kindling-sim://123'), { code: 'KDL_ERR_BAD_REQUEST' })
})
