// The pose editor's canvas (an anywidget ES module). The contract (traits, messages, DOM hooks) is
// in the docstring of charstudio/ui/pose_editor.py; Python applies every edit and syncs `people` back.
const JOINT_HIT = 10; // css px: a press this close to a joint drags the joint
const FIGURE_MARGIN = 12; // css px around a person's box: a press there drags the whole figure

function rgb(c, f = 1) {
  return `rgb(${Math.round(c[0] * f)}, ${Math.round(c[1] * f)}, ${Math.round(c[2] * f)})`;
}

function render({ model, el }) {
  const canvas = document.createElement("canvas");
  canvas.className = "cs-pose-canvas";
  el.classList.add("cs-pose-canvas-wrap");
  el.appendChild(canvas);
  const ctx = canvas.getContext("2d");
  const picture = new Image();
  let pictureReady = false;
  let people = model.get("people");
  let drag = null; // {kind: "joint" | "figure", person, joint, start: [x, y], at: [x, y]}

  const size = () => [model.get("canvas_width"), model.get("canvas_height")];
  const scale = () => model.get("view_size") / Math.max(...size());

  function layout() {
    const [w, h] = size();
    const s = scale();
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${Math.round(w * s)}px`;
    canvas.style.height = `${Math.round(h * s)}px`;
    canvas.width = Math.round(w * s * dpr);
    canvas.height = Math.round(h * s * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  // The people as drawn now: during a drag, the dragged joint or figure where the pointer is.
  function shown() {
    if (!drag) return people;
    const [dx, dy] = [drag.at[0] - drag.start[0], drag.at[1] - drag.start[1]];
    return people.map((p, i) => {
      if (i !== drag.person) return p;
      const body = p.body.map((pt, j) => {
        if (drag.kind === "joint") return j === drag.joint ? [drag.at[0], drag.at[1], pt[2] > 0 ? pt[2] : 1] : pt;
        return pt[2] > 0 ? [pt[0] + dx, pt[1] + dy, pt[2]] : pt;
      });
      return { ...p, body };
    });
  }

  function publish(current) {
    // DOM hooks for browser tests: every present joint's position in css px from the canvas's top-left.
    const s = scale();
    const joints = [];
    current.forEach((p, i) => p.body.forEach((pt, j) => {
      if (pt[2] > 0) joints.push({ person: i, joint: j, x: +(pt[0] * s).toFixed(2), y: +(pt[1] * s).toFixed(2) });
    }));
    canvas.dataset.joints = JSON.stringify(joints);
    canvas.dataset.scale = String(s);
    canvas.dataset.selected = String(model.get("selected"));
    canvas.dataset.people = String(current.length);
  }

  function draw() {
    const [w, h] = size();
    const s = scale();
    const limbs = model.get("limbs");
    const colors = model.get("colors");
    const selected = model.get("selected");
    const current = shown();
    ctx.fillStyle = "black";
    ctx.fillRect(0, 0, w * s, h * s);
    if (pictureReady && model.get("background")) {
      ctx.globalAlpha = model.get("background_opacity");
      ctx.drawImage(picture, 0, 0, w * s, h * s);
    }
    current.forEach((p, i) => {
      const body = p.body;
      ctx.globalAlpha = i === selected ? 1.0 : 0.55;
      ctx.lineCap = "round";
      ctx.lineWidth = Math.max(4, 8 * s);
      limbs.forEach(([a, b], k) => {
        if (body[a][2] > 0 && body[b][2] > 0) {
          ctx.strokeStyle = rgb(colors[k], 0.6);
          ctx.beginPath();
          ctx.moveTo(body[a][0] * s, body[a][1] * s);
          ctx.lineTo(body[b][0] * s, body[b][1] * s);
          ctx.stroke();
        }
      });
      for (const part of ["hand_left", "hand_right", "face"]) {
        if (!p[part]) continue;
        ctx.fillStyle = part === "face" ? "white" : "rgb(0, 0, 255)";
        p[part].forEach((pt) => {
          if (pt[2] > 0) ctx.fillRect(pt[0] * s - 1, pt[1] * s - 1, 2, 2);
        });
      }
      body.forEach((pt, j) => {
        if (!(pt[2] > 0)) return;
        ctx.fillStyle = rgb(colors[j]);
        ctx.beginPath();
        ctx.arc(pt[0] * s, pt[1] * s, 5, 0, 2 * Math.PI);
        ctx.fill();
        if (i === selected) {
          ctx.strokeStyle = "white";
          ctx.lineWidth = 1;
          ctx.stroke();
        }
      });
    });
    ctx.globalAlpha = 1.0;
    publish(current);
  }

  function at(ev) {
    const r = canvas.getBoundingClientRect();
    const s = scale();
    const [w, h] = size();
    const x = Math.min(Math.max((ev.clientX - r.left) / s, 0), w - 0.001);
    const y = Math.min(Math.max((ev.clientY - r.top) / s, 0), h - 0.001);
    return [x, y];
  }

  function hit([x, y]) {
    const s = scale();
    const order = people.map((_, i) => i);
    const selected = model.get("selected");
    order.sort((a, b) => (b === selected) - (a === selected)); // the selected person first
    let best = null;
    for (const i of order) {
      people[i].body.forEach((pt, j) => {
        if (!(pt[2] > 0)) return;
        const d = Math.hypot((pt[0] - x) * s, (pt[1] - y) * s);
        if (d <= JOINT_HIT && (!best || d < best.d - 1e-9)) best = { kind: "joint", person: i, joint: j, d };
      });
      if (best) return best;
    }
    for (const i of order) {
      const pts = people[i].body.filter((pt) => pt[2] > 0);
      if (!pts.length) continue;
      const m = FIGURE_MARGIN / s;
      const xs = pts.map((p) => p[0]);
      const ys = pts.map((p) => p[1]);
      if (x >= Math.min(...xs) - m && x <= Math.max(...xs) + m && y >= Math.min(...ys) - m && y <= Math.max(...ys) + m) {
        return { kind: "figure", person: i, joint: -1 };
      }
    }
    return null;
  }

  canvas.addEventListener("pointerdown", (ev) => {
    const p = at(ev);
    const found = hit(p);
    if (!found) return;
    ev.preventDefault();
    canvas.setPointerCapture?.(ev.pointerId);
    drag = { ...found, start: p, at: p };
    if (found.person !== model.get("selected")) {
      model.set("selected", found.person);
      model.save_changes();
    }
    draw();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    drag.at = at(ev);
    draw();
  });
  const finish = (ev) => {
    if (!drag) return;
    drag.at = at(ev);
    const d = drag;
    const moved = Math.hypot(d.at[0] - d.start[0], d.at[1] - d.start[1]) * scale() >= 1;
    if (moved && d.kind === "joint") {
      model.send({ event: "move_joint", person: d.person, joint: d.joint, x: d.at[0], y: d.at[1] });
    } else if (moved) {
      model.send({ event: "translate", person: d.person, dx: d.at[0] - d.start[0], dy: d.at[1] - d.start[1] });
    }
    // Keep showing the dragged state until Python's edit comes back as `people`.
    if (moved) people = shown();
    drag = null;
    draw();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", () => { drag = null; draw(); });

  function loadPicture() {
    const src = model.get("background");
    pictureReady = false;
    if (!src) { draw(); return; }
    picture.onload = () => { pictureReady = true; draw(); };
    picture.src = src;
  }

  const handlers = [
    ["change:people", () => { people = model.get("people"); draw(); }],
    ["change:selected", draw],
    ["change:background", loadPicture],
    ["change:background_opacity", draw],
    ["change:canvas_width", () => { layout(); draw(); }],
    ["change:canvas_height", () => { layout(); draw(); }],
    ["change:view_size", () => { layout(); draw(); }],
  ];
  for (const [name, fn] of handlers) model.on(name, fn);
  layout();
  loadPicture();
  draw();
  return () => {
    for (const [name, fn] of handlers) model.off(name, fn);
  };
}

export default { render };
