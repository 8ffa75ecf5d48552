// Typesets the math of a built site with its bundled MathJax in Node (liteDOM, no network):
//   node docs/_ext/check_math.js docs/_build/html
// exits 1 when any formula fails to render; prints the count per page.
const fs = require('fs'), path = require('path');
const site = process.argv[2];
const MathJax = require(path.join(site, '_static/mathjax/node-main.js'));
MathJax.init({
  loader: {paths: {mathjax: path.join(site, '_static/mathjax')}, load: ['input/tex-full', 'output/chtml', 'adaptors/liteDOM']},
  tex: {inlineMath: [['\\(', '\\)']], displayMath: [['\\[', '\\]']]},
}).then((MJ) => {
  const adaptor = MJ.startup.adaptor;
  let pages = 0, formulas = 0, errors = 0;
  const walk = (d) => fs.readdirSync(d).flatMap((f) => { const p = path.join(d, f); return fs.statSync(p).isDirectory() ? (f === '_static' ? [] : walk(p)) : (p.endsWith('.html') ? [p] : []); });
  for (const file of walk(site)) {
    const html = fs.readFileSync(file, 'utf8');
    if (!html.includes('\\(') && !html.includes('\\[')) continue;
    const doc = MJ.startup.getDocument(html);
    doc.render();
    const out = adaptor.outerHTML(adaptor.root(doc.document)); const found = out.split("<mjx-container").length - 1;
    const bad = out.split('<mjx-merror').length - 1;
    pages += 1; formulas += found; errors += bad;
    console.log(`${path.relative(site, file)}: ${found} formulas, ${bad} errors`);
  }
  console.log(`TOTAL pages ${pages} formulas ${formulas} errors ${errors}`);
  process.exit(errors ? 1 : 0);
}).catch((e) => { console.error('FAILED', e); process.exit(2); });
