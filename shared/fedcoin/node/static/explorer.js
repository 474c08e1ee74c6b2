// Live updates of the chain page: head, chain table and race, every second, from the JSON API.
(function () {
  function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
  function acct(a) { return '<a class="hash" href="/explorer/accounts/' + esc(a) + '" title="' + esc(a) + '">' + esc(a.slice(0, 12)) + '</a>'; }
  function when(ms) { return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + ' UTC'; }
  async function get(path) { const r = await fetch(path, {cache: 'no-store'}); if (!r.ok) throw new Error(path); return r.json(); }
  function preview(s) {
    const head = s.slice(0, 4).map(v => (v >= 0 ? '+' : '') + Number(v).toFixed(3)).join(' ');
    return esc(s.length > 4 ? head + ' … (' + s.length + ')' : head);
  }
  let shown = null;
  async function tick() {
    try {
      const head = await get('/chain/head');
      document.getElementById('head-height').textContent = head.height;
      document.getElementById('head-hash').textContent = head.hash.slice(0, 16);
      document.getElementById('head-d').textContent = Number(head.next_difficulty).toPrecision(3);
      if (shown !== head.hash) {
        const chain = await get('/chain');
        document.querySelector('#chain-table tbody').innerHTML = chain.slice().reverse().map(b =>
          '<tr><td><a href="/explorer/blocks/' + b.height + '">' + b.height + '</a></td><td><span class="hash">' +
          esc(b.hash.slice(0, 16)) + '</span></td><td>' + (b.height > 0 ? acct(b.winner) : '—') + '</td><td>' +
          esc(b.task_id) + '</td><td>' + Number(b.difficulty).toPrecision(3) + '</td><td>' + b.iterations +
          '</td><td>' + b.transactions + '</td><td>' + (b.timestamp ? when(b.timestamp) : '') + '</td></tr>').join('');
        shown = head.hash;
      }
      const race = await get('/race');
      const status = document.getElementById('race-status');
      const rows = document.querySelector('#race-table tbody');
      if (!race.task_id) { status.textContent = 'Not mining: no unsettled task.'; rows.innerHTML = ''; }
      else {
        status.textContent = 'Task ' + race.task_id + ' on height ' + race.height + ', D = ' + Number(race.difficulty).toPrecision(3);
        rows.innerHTML = race.miners.map(m => '<tr><td>' + acct(m.account) + (m.self ? ' (this node)' : '') + '</td><td>' +
          m.iterations + '</td><td>' + preview(m.shapley) + '</td><td>' + (m.distance === null ? '—' : Number(m.distance).toFixed(5)) + '</td><td>' +
          (m.within ? 'yes' : 'no') + '</td></tr>').join('');
      }
      document.getElementById('updated').textContent = 'updated ' + new Date().toISOString().slice(11, 19);
    } catch (e) {
      document.getElementById('updated').textContent = 'node unreachable: ' + e.message;
    }
  }
  tick();
  setInterval(tick, 1000);
})();
