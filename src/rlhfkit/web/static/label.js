// Ranking by keyboard alone or by drag and drop; without this script the form still works.
// ↑/↓ (or J/K) choose a completion; a number key gives it that rank (U/D in thumbs mode);
// Z undoes the last change; Enter submits once every completion has its label.
(function () {
  "use strict";
  const form = document.getElementById("label-form");
  if (!form) return;
  const list = document.getElementById("cards");
  const note = document.getElementById("form-note");
  const thumbs = form.dataset.mode === "thumbs";
  const ties = form.dataset.ties === "yes";
  const cards = () => Array.from(list.querySelectorAll(".card"));
  const history = []; // what each change replaced: the labels and the chosen card
  let selected = 0;

  function select(index) {
    const all = cards();
    selected = Math.max(0, Math.min(all.length - 1, index));
    all.forEach((card, i) => card.classList.toggle("selected", i === selected));
    all[selected].scrollIntoView({ block: "nearest" });
  }

  function rankInput(card) { return card.querySelector("input[type=number]"); }

  function snapshot() {
    const labels = cards().map((card) => thumbs
      ? [card, (card.querySelector("input:checked") || {}).value || ""]
      : [card, rankInput(card).value]);
    return { labels, selected };
  }

  function restore(state) {
    state.labels.forEach(([card]) => list.appendChild(card)); // the order, as it was
    select(state.selected);
    state.labels.forEach(([card, value]) => {
      if (thumbs) {
        card.querySelectorAll("input[type=radio]").forEach((r) => { r.checked = r.value === value; });
      } else {
        rankInput(card).value = value;
      }
    });
  }

  function setRank(card, rank) {
    history.push(snapshot());
    if (!ties) {
      cards().forEach((other) => {
        if (other !== card && rankInput(other).value === String(rank)) rankInput(other).value = "";
      });
    }
    rankInput(card).value = String(rank);
  }

  function setThumb(card, value) {
    history.push(snapshot());
    card.querySelectorAll("input[type=radio]").forEach((r) => { r.checked = r.value === value; });
  }

  function complete() {
    return cards().every((card) => thumbs ? card.querySelector("input:checked") : rankInput(card).value);
  }

  function nextUnlabeled() {
    const all = cards();
    for (let step = 1; step <= all.length; step++) {
      const i = (selected + step) % all.length;
      if (thumbs ? !all[i].querySelector("input:checked") : !rankInput(all[i]).value) return i;
    }
    return selected;
  }

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target.tagName === "TEXTAREA" ||
      (target.tagName === "INPUT" && !["number", "radio"].includes(target.type));
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const all = cards();
    const key = event.key;
    if (key === "ArrowDown" || key === "j") { select(selected + 1); event.preventDefault(); return; }
    if (key === "ArrowUp" || key === "k") { select(selected - 1); event.preventDefault(); return; }
    if (key === "z" || key === "Z") {
      if (history.length) restore(history.pop());
      event.preventDefault();
      return;
    }
    if (key === "Enter") {
      event.preventDefault();
      if (complete()) {
        form.requestSubmit();
      } else {
        note.hidden = false;
        note.textContent = thumbs ? "Give every completion a thumb first." : "Rank every completion first.";
      }
      return;
    }
    if (thumbs && (key === "u" || key === "d")) {
      setThumb(all[selected], key === "u" ? "up" : "down");
      select(nextUnlabeled());
      event.preventDefault();
      return;
    }
    if (!thumbs && /^[1-9]$/.test(key) && Number(key) <= all.length) {
      setRank(all[selected], Number(key));
      select(nextUnlabeled());
      event.preventDefault();
    }
  });

  // Drag and drop: the order of the cards becomes the ranking, top = 1.
  let dragged = null;
  let before = null; // the state when the drag began, for Z
  list.addEventListener("dragstart", (event) => {
    dragged = event.target.closest(".card");
    if (!dragged) return;
    before = snapshot();
    dragged.classList.add("dragging");
  });
  list.addEventListener("dragover", (event) => {
    event.preventDefault();
    const over = event.target.closest(".card");
    if (!dragged || !over || over === dragged) return;
    const box = over.getBoundingClientRect();
    list.insertBefore(dragged, event.clientY < box.top + box.height / 2 ? over : over.nextSibling);
  });
  list.addEventListener("drop", (event) => event.preventDefault());
  list.addEventListener("dragend", () => {
    if (!dragged) return;
    dragged.classList.remove("dragging");
    const moved = cards().some((card, i) => card !== before.labels[i][0]);
    if (moved) {
      history.push(before);
      cards().forEach((card, i) => { rankInput(card).value = String(i + 1); });
      select(cards().indexOf(dragged));
    }
    dragged = null;
  });
  list.addEventListener("click", (event) => {
    const card = event.target.closest(".card");
    if (card) select(cards().indexOf(card));
  });

  form.addEventListener("submit", () => {
    form.querySelector("#submit").disabled = true; // one click, one submission
  });
  select(0);
})();
