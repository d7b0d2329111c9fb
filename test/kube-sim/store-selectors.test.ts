import t from 'tap'
import { labelSelectorString, matchesLabelSelector, parseLabelSelector } from '../../kube-sim/selectors.js'
import { ApiError } from '../../kube-sim/types.js'

// Label selectors as the controllers read workload specs (issue 10): LabelSelector objects and their string form.
t.test('a LabelSelector object matches by matchLabels and matchExpressions; {} selects all, null nothing', async (t) => {
  const sel = { matchLabels: { app: 'pool' }, matchExpressions: [{ key: 'tier', operator: 'In', values: ['a', 'b'] }, { key: 'claimed', operator: 'DoesNotExist' }] }
  t.ok(matchesLabelSelector(sel, { app: 'pool', tier: 'a' }))
  t.notOk(matchesLabelSelector(sel, { app: 'pool', tier: 'c' }), 'In')
  t.notOk(matchesLabelSelector(sel, { app: 'pool', tier: 'a', claimed: 'x' }), 'DoesNotExist')
  t.notOk(matchesLabelSelector({ matchExpressions: [{ key: 'k', operator: 'Exists' }] }, {}), 'Exists')
  t.ok(matchesLabelSelector({ matchExpressions: [{ key: 'k', operator: 'NotIn', values: ['v'] }] }, {}), 'NotIn matches an absent key')
  t.ok(matchesLabelSelector({}, { any: 'thing' }), 'the empty selector selects everything')
  t.notOk(matchesLabelSelector(null, { any: 'thing' }), 'no selector selects nothing')
  t.throws(() => matchesLabelSelector({ matchExpressions: [{ key: 'k', operator: 'Near' }] }, {}), ApiError)
})

t.test('the string form round-trips through the parser', async (t) => {
  const sel = { matchLabels: { 'kindling.io/managed': 'true' }, matchExpressions: [{ key: 'tier', operator: 'NotIn', values: ['x', 'y'] }, { key: 'a', operator: 'Exists' }, { key: 'b', operator: 'DoesNotExist' }] }
  const s = labelSelectorString(sel)
  t.equal(s, 'kindling.io/managed=true,tier notin (x,y),a,!b')
  t.same(parseLabelSelector(s).map((r) => r.operator), ['In', 'NotIn', 'Exists', 'DoesNotExist'])
  t.same(parseLabelSelector('n>3,m<10').map((r) => [r.operator, r.values[0]]), [['Gt', '3'], ['Lt', '10']])
  t.throws(() => parseLabelSelector('a=b c'), ApiError, 'a space inside a value is refused')
  t.throws(() => parseLabelSelector('n>x'), ApiError)
})
