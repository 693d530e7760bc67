"""Procedural indoor-like multi-task scenes, ray-cast with exact ground truth.

Each scene is a room (floor, ceiling, four walls, a framed picture on some walls) holding a random
set of boxes (rotated about the vertical), spheres and vertical cylinders standing on the floor,
with random colours and procedural textures (checkers, stripes), lit by a point light with
Lambertian shading, ambient light and hard shadows, seen from a random camera. The renderer is
vectorised over scenes and pixels with torch (CPU, a few thousand 64x64 scenes per few seconds)
and returns, per pixel: RGB, the semantic class, the z-depth (metres along the camera axis) and
the unit surface normal in camera coordinates (x right, y up, z towards the camera; a surface
facing the camera has normal (0, 0, 1)).

Everything is a deterministic function of ``(seed, index)``: scene ``i`` of a split is the same
whatever the batch it is rendered in.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch

__all__ = ["CLASSES", "render_scenes"]

#: semantic classes of the procedural scenes (index = label).
CLASSES = ("ceiling", "floor", "wall", "picture", "box", "sphere", "cylinder")
CEILING, FLOOR, WALL, PICTURE, BOX, SPHERE, CYLINDER = range(7)
N_BOX, N_SPHERE, N_CYL = 3, 2, 2
INF = float("inf")


def _hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0,1] -> RGB [..., 3]."""
    k = lambda n: (n + h * 6.0) % 6.0  # noqa: E731
    f = lambda n: v - v * s * torch.clamp(torch.minimum(k(n), 4.0 - k(n)), 0.0, 1.0)  # noqa: E731
    return torch.stack([f(5.0), f(3.0), f(1.0)], dim=-1)


def _scene_params(seeds: np.ndarray) -> Dict[str, torch.Tensor]:
    """Random parameters of scenes, one independent numpy generator per scene seed."""
    rows = []
    for s in seeds:
        r = np.random.default_rng(int(s))
        rows.append(r.random(256))
    u = torch.from_numpy(np.stack(rows)).float()  # [B, 256] uniform numbers
    it = iter(range(256))
    nxt = lambda: u[:, next(it)]  # noqa: E731

    def rng(a: float, b: float) -> torch.Tensor:
        return a + (b - a) * nxt()

    p: Dict[str, torch.Tensor] = {}
    p["W"], p["D"], p["H"] = rng(2.5, 4.0), rng(2.5, 4.0), rng(2.4, 3.2)
    half = torch.minimum(p["W"], p["D"])
    az = rng(0, 2 * math.pi)
    rc = rng(0.72, 0.88) * half
    cam = torch.stack([rc * torch.cos(az), rng(0.9, 1.9), rc * torch.sin(az)], -1)
    tgt = torch.stack([rng(-0.6, 0.6), rng(0.2, 0.7), rng(-0.6, 0.6)], -1)
    p["cam"], p["tgt"] = cam, tgt
    p["fov"] = rng(50.0, 70.0) * math.pi / 180.0
    p["roll"] = rng(-0.08, 0.08)
    p["light"] = torch.stack([rng(-0.5, 0.5) * p["W"], p["H"] - 0.15, rng(-0.5, 0.5) * p["D"]], -1)
    p["ambient"] = rng(0.2, 0.4)
    p["intensity"] = rng(0.8, 1.2)
    orad = 0.55 * half

    def place(n: int):
        a, rr = rng(0, 2 * math.pi), orad * torch.sqrt(nxt())
        return rr * torch.cos(a), rr * torch.sin(a)

    for kind, n in (("box", N_BOX), ("sph", N_SPHERE), ("cyl", N_CYL)):
        for j in range(n):
            x, z = place(j)
            p[f"{kind}{j}_xz"] = torch.stack([x, z], -1)
            p[f"{kind}{j}_on"] = nxt() < (0.7 if j == 0 else 0.45)
            p[f"{kind}{j}_col"] = _hsv(nxt(), rng(0.35, 0.9), rng(0.45, 1.0))
            p[f"{kind}{j}_tex"] = (nxt() * 3).floor()  # 0 plain, 1 stripes, 2 checker
            p[f"{kind}{j}_freq"] = rng(4.0, 12.0)
            p[f"{kind}{j}_a"] = rng(0.15, 0.8)  # size
            p[f"{kind}{j}_b"] = rng(0.15, 0.8)
            p[f"{kind}{j}_c"] = rng(0.2, 1.2)
            p[f"{kind}{j}_yaw"] = rng(0, math.pi)
    # room surfaces: floor checker, wall stripes, pictures
    p["floor_c1"] = _hsv(nxt(), rng(0.1, 0.5), rng(0.35, 0.8))
    p["floor_c2"] = p["floor_c1"] * rng(0.55, 0.85)[:, None]
    p["floor_f"] = rng(1.0, 3.0)
    p["wall_c"] = _hsv(nxt(), rng(0.0, 0.35), rng(0.6, 0.95))
    p["wall_f"] = rng(2.0, 8.0)
    p["wall_a"] = rng(0.0, 0.2)
    p["ceil_c"] = _hsv(nxt(), rng(0.0, 0.1), rng(0.8, 1.0))
    for w in range(4):
        p[f"pic{w}_on"] = nxt() < 0.6
        p[f"pic{w}_u"] = rng(-0.5, 0.5)
        p[f"pic{w}_v"] = rng(1.0, 1.8)
        p[f"pic{w}_hw"] = rng(0.3, 0.8)
        p[f"pic{w}_hh"] = rng(0.2, 0.5)
        p[f"pic{w}_c"] = _hsv(nxt(), rng(0.5, 1.0), rng(0.3, 0.9))
        p[f"pic{w}_f"] = rng(6.0, 20.0)
    return p


def _rot_y(v: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Rotate [B, P, 3] vectors about y by an angle with cos c, sin s ([B])."""
    c, s = c[:, None], s[:, None]
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return torch.stack([c * x + s * z, y, -s * x + c * z], -1)


def _objects(p, o, d, t_room):
    """Closest object hit along rays o [B,1,3] + t d [B,P,3]: (t, normal, class, slot, local point)."""
    B, P, _ = d.shape
    best_t = t_room.clone()
    best_n = torch.zeros(B, P, 3)
    best_c = torch.full((B, P), -1, dtype=torch.long)
    best_k = torch.full((B, P), -1, dtype=torch.long)
    eps = 1e-4

    def take(t, n, cls, k):
        nonlocal best_t, best_n, best_c, best_k
        better = t < best_t
        best_t = torch.where(better, t, best_t)
        best_n = torch.where(better[..., None], n, best_n)
        best_c = torch.where(better, torch.full_like(best_c, cls), best_c)
        best_k = torch.where(better, torch.full_like(best_k, k), best_k)

    for j in range(N_SPHERE):
        on = p[f"sph{j}_on"][:, None]
        r = (0.5 * p[f"sph{j}_a"] + 0.1)[:, None]
        xz = p[f"sph{j}_xz"]
        c = torch.stack([xz[:, 0], r[:, 0], xz[:, 1]], -1)[:, None]
        oc = o - c
        b = (oc * d).sum(-1)
        cc = (oc * oc).sum(-1) - r * r
        disc = b * b - cc
        t = -b - torch.sqrt(disc.clamp_min(0))
        t = torch.where((disc > 0) & (t > eps) & on, t, torch.full_like(t, INF))
        n = (o + t[..., None] * d - c) / r[..., None]
        take(t, n, SPHERE, j)
    for j in range(N_BOX):
        on = p[f"box{j}_on"][:, None]
        h = torch.stack([0.5 * p[f"box{j}_a"] + 0.08, 0.5 * p[f"box{j}_c"] + 0.08,
                         0.5 * p[f"box{j}_b"] + 0.08], -1)[:, None]
        xz = p[f"box{j}_xz"]
        c = torch.stack([xz[:, 0], h[:, 0, 1], xz[:, 1]], -1)[:, None]
        yaw = p[f"box{j}_yaw"]
        cy, sy = torch.cos(yaw), torch.sin(yaw)
        ol = _rot_y((o - c).expand(B, P, 3), cy, -sy)
        dl = _rot_y(d, cy, -sy)
        dl = torch.where(dl.abs() < 1e-9, torch.full_like(dl, 1e-9), dl)
        t1, t2 = (-h - ol) / dl, (h - ol) / dl
        tn, tf = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tmin, axis = tn.max(-1)
        tmax = tf.min(-1).values
        t = torch.where((tmax >= tmin) & (tmin > eps) & on, tmin, torch.full_like(tmin, INF))
        nl = -torch.sign(torch.gather(dl, -1, axis[..., None])) * torch.nn.functional.one_hot(axis, 3).float()
        take(t, _rot_y(nl, cy, sy), BOX, j)
    for j in range(N_CYL):
        on = p[f"cyl{j}_on"][:, None]
        r = (0.4 * p[f"cyl{j}_a"] + 0.08)[:, None]
        hgt = (p[f"cyl{j}_c"] + 0.2)[:, None]
        xz = p[f"cyl{j}_xz"][:, None]
        ox, oz = o[..., 0] - xz[..., 0], o[..., 2] - xz[..., 1]
        dx, dz = d[..., 0], d[..., 2]
        a = (dx * dx + dz * dz).clamp_min(1e-12)
        b = ox * dx + oz * dz
        cc = ox * ox + oz * oz - r * r
        disc = b * b - a * cc
        ts = (-b - torch.sqrt(disc.clamp_min(0))) / a
        ys = o[..., 1] + ts * d[..., 1]
        ts = torch.where((disc > 0) & (ts > eps) & (ys >= 0) & (ys <= hgt) & on, ts, torch.full_like(ts, INF))
        dy = torch.where(d[..., 1].abs() < 1e-9, torch.full_like(d[..., 1], 1e-9), d[..., 1])
        tc = (hgt - o[..., 1]) / dy
        px, pz = ox + tc * dx, oz + tc * dz
        tc = torch.where((tc > eps) & (px * px + pz * pz <= r * r) & on, tc, torch.full_like(tc, INF))
        side = ts <= tc
        t = torch.minimum(ts, tc)
        ns = torch.stack([(ox + ts * dx) / r, torch.zeros_like(ts), (oz + ts * dz) / r], -1)
        ncap = torch.zeros_like(ns)
        ncap[..., 1] = 1.0
        take(t, torch.where(side[..., None], ns, ncap), CYLINDER, j)
    return best_t, best_n, best_c, best_k


def render_scenes(seeds: np.ndarray, size: int = 64, shadows: bool = True) -> Dict[str, np.ndarray]:
    """Render one scene per seed at ``size`` x ``size``.

    Returns numpy arrays: ``image`` uint8 [B,3,H,W], ``seg`` uint8 [B,H,W] (labels of
    :data:`CLASSES`), ``depth`` float32 [B,H,W] (metres, z-depth), ``normal`` float32 [B,3,H,W]
    (unit, camera frame), ``fov`` float32 [B] (horizontal = vertical field of view, radians).
    """
    seeds = np.asarray(seeds)
    B, S = len(seeds), int(size)
    p = _scene_params(seeds)
    # camera frame
    fwd = torch.nn.functional.normalize(p["tgt"] - p["cam"], dim=-1)
    up0 = torch.tensor([0.0, 1.0, 0.0]).expand(B, 3)
    right = torch.nn.functional.normalize(torch.cross(fwd, up0, dim=-1), dim=-1)
    up = torch.cross(right, fwd, dim=-1)
    cr, sr = torch.cos(p["roll"])[:, None], torch.sin(p["roll"])[:, None]
    right, up = cr * right + sr * up, -sr * right + cr * up
    f = 1.0 / torch.tan(p["fov"] / 2)  # focal length in half-image units
    lin = (torch.arange(S, dtype=torch.float32) + 0.5) / S * 2 - 1
    v, u = torch.meshgrid(-lin, lin, indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    d = u[..., None] * right[:, None] + v[..., None] * up[:, None] + f[:, None, None] * fwd[:, None]
    d = torch.nn.functional.normalize(d, dim=-1)  # [B, P, 3]
    o = p["cam"][:, None]  # [B, 1, 3]
    P = d.shape[1]
    W, D, H = p["W"][:, None], p["D"][:, None], p["H"][:, None]
    # --- room (camera inside a convex box)
    dx = torch.where(d[..., 0].abs() < 1e-9, torch.full_like(d[..., 0], 1e-9), d[..., 0])
    dy = torch.where(d[..., 1].abs() < 1e-9, torch.full_like(d[..., 1], 1e-9), d[..., 1])
    dz = torch.where(d[..., 2].abs() < 1e-9, torch.full_like(d[..., 2], 1e-9), d[..., 2])
    tx = (torch.where(dx > 0, W, -W) - o[..., 0]) / dx
    ty = (torch.where(dy > 0, H, torch.zeros_like(H)) - o[..., 1]) / dy
    tz = (torch.where(dz > 0, D, -D) - o[..., 2]) / dz
    t_room, which = torch.stack([tx, ty, tz], -1).min(-1)
    room_n = torch.zeros(B, P, 3)
    sgn = -torch.sign(torch.stack([dx, dy, dz], -1))
    room_n.scatter_(-1, which[..., None], torch.gather(sgn, -1, which[..., None]))
    room_c = torch.where(which == 1, torch.where(dy > 0, CEILING, FLOOR), WALL).long()
    # --- objects
    t_obj, n_obj, c_obj, k_obj = _objects(p, o, d, t_room)
    hit_obj = c_obj >= 0
    t = torch.where(hit_obj, t_obj, t_room)
    n = torch.where(hit_obj[..., None], n_obj, room_n)
    cls = torch.where(hit_obj, c_obj, room_c)
    x = o + t[..., None] * d  # hit points [B, P, 3]
    # --- albedo with textures
    alb = torch.zeros(B, P, 3)
    fl = p["floor_f"][:, None]
    chk = ((torch.floor(x[..., 0] * fl) + torch.floor(x[..., 2] * fl)) % 2)[..., None]
    alb = torch.where((cls == FLOOR)[..., None], p["floor_c1"][:, None] * (1 - chk) + p["floor_c2"][:, None] * chk, alb)
    alb = torch.where((cls == CEILING)[..., None], p["ceil_c"][:, None].expand(B, P, 3), alb)
    # walls: horizontal coordinate along the wall
    wall_u = torch.where(which == 0, x[..., 2], x[..., 0])
    stripes = 1 - p["wall_a"][:, None] * (torch.sin(wall_u * p["wall_f"][:, None] * math.pi) > 0).float()
    alb = torch.where((cls == WALL)[..., None], p["wall_c"][:, None] * stripes[..., None], alb)
    # pictures: wall id 0:+x 1:-x 2:+z 3:-z
    wall_id = torch.where(which == 0, torch.where(dx > 0, 0, 1), torch.where(dz > 0, 2, 3))
    for w in range(4):
        on = p[f"pic{w}_on"][:, None]
        du = (wall_u - p[f"pic{w}_u"][:, None] * torch.where(which == 0, D, W)).abs()
        dv = (x[..., 1] - p[f"pic{w}_v"][:, None]).abs()
        inside = (cls == WALL) & (wall_id == w) & on & (du < p[f"pic{w}_hw"][:, None]) & (dv < p[f"pic{w}_hh"][:, None])
        frame = (du > p[f"pic{w}_hw"][:, None] - 0.05) | (dv > p[f"pic{w}_hh"][:, None] - 0.05)
        pat = 0.75 + 0.25 * torch.sin(du * p[f"pic{w}_f"][:, None]) * torch.cos(dv * p[f"pic{w}_f"][:, None])
        col = torch.where(frame[..., None], torch.full((B, P, 3), 0.15), p[f"pic{w}_c"][:, None] * pat[..., None])
        alb = torch.where(inside[..., None], col, alb)
        cls = torch.where(inside, torch.full_like(cls, PICTURE), cls)
    for kind, n_slots, cid in (("box", N_BOX, BOX), ("sph", N_SPHERE, SPHERE), ("cyl", N_CYL, CYLINDER)):
        for j in range(n_slots):
            m = (c_obj == cid) & (k_obj == j)
            fq = p[f"{kind}{j}_freq"][:, None]
            tex = p[f"{kind}{j}_tex"][:, None]
            st = (torch.sin(x[..., 1] * fq * math.pi) > 0).float()
            ck = ((torch.floor(x[..., 0] * fq / 2) + torch.floor(x[..., 1] * fq / 2) + torch.floor(x[..., 2] * fq / 2)) % 2)
            shade = torch.where(tex == 1, 1 - 0.35 * st, torch.where(tex == 2, 1 - 0.35 * ck, torch.ones_like(st)))
            alb = torch.where(m[..., None], p[f"{kind}{j}_col"][:, None] * shade[..., None], alb)
    # --- shading: Lambert + ambient + shadows
    L = p["light"][:, None]
    to_l = L - x
    dist_l = to_l.norm(dim=-1)
    ldir = to_l / dist_l[..., None]
    lam = (n * ldir).sum(-1).clamp_min(0)
    if shadows:
        xs = x + 1e-3 * n
        t_sh, _, c_sh, _ = _objects(p, xs, ldir, dist_l)
        lam = torch.where(c_sh >= 0, lam * 0.15, lam)
    atten = p["intensity"][:, None] * 6.0 / (4.0 + dist_l ** 2)
    light = p["ambient"][:, None] + lam * atten
    rgb = (alb * light[..., None]).clamp(0, 1) ** (1 / 2.2)
    # --- outputs (camera frame normals: x right, y up, z towards the camera)
    depth = t * (d * fwd[:, None]).sum(-1)
    n_cam = torch.stack([(n * right[:, None]).sum(-1), (n * up[:, None]).sum(-1), -(n * fwd[:, None]).sum(-1)], -1)
    n_cam = torch.nn.functional.normalize(n_cam, dim=-1)
    img = (rgb * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return {
        "image": img.reshape(B, S, S, 3).permute(0, 3, 1, 2).contiguous().numpy(),
        "seg": cls.reshape(B, S, S).to(torch.uint8).numpy(),
        "depth": depth.reshape(B, S, S).float().numpy(),
        "normal": n_cam.reshape(B, S, S, 3).permute(0, 3, 1, 2).contiguous().numpy(),
        "fov": p["fov"].numpy(),
    }


def split_seeds(seed: int, split: str, n: int) -> np.ndarray:
    """Per-scene seeds of a split: disjoint streams for train / val / test."""
    salt = {"train": 1, "val": 2, "test": 3}[split]
    ss = np.random.SeedSequence([int(seed), salt])
    return ss.generate_state(n, dtype=np.uint64) % (2 ** 63)


def render_split(seed: int, split: str, n: int, size: int = 64, chunk: int = 128,
                 progress: bool = False) -> Dict[str, np.ndarray]:
    """Render ``n`` scenes of a split in chunks (each scene depends only on its seed)."""
    seeds = split_seeds(seed, split, n)
    parts = []
    rng = range(0, n, chunk)
    if progress:
        from tqdm import tqdm

        rng = tqdm(rng, desc=f"render {split}", unit="chunk", leave=False)
    for a in rng:
        parts.append(render_scenes(seeds[a:a + chunk], size))
    return {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}


