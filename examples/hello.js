// The smallest Kindling function: an ES module whose default export answers each call.
export default async function hello(event) {
  const name = event.query.name ?? event.json?.name ?? 'world'
  console.log(`greeting ${name}`) // kept in the function's logs: kindling fn logs hello
  return { status: 200, headers: { 'content-type': 'text/plain' }, body: `hello, ${name}\n` }
}
