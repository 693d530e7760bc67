"""The paper's study (Garg, Zhang, Guan 2023) as a script, with the library API.

Baseline -> iterative pruning with the Taylor and cosine criteria -> re-initialised retraining of
each pruned architecture -> results.json / results.csv / figures / report.md. Re-running with the
same --out resumes. The same as ``mtlkernels study`` with fewer knobs.

    python python/paper_study.py --out runs/paper_study              # the demo preset (CPU, minutes)
    python python/paper_study.py --steps 100 --targets 0.5 0.9      # quicker
"""
import argparse

from mtlkernels.study import Study, make_config, write_all


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/paper_study")
    ap.add_argument("--preset", default="demo", choices=["demo", "paper"])
    ap.add_argument("--data-root", default=None, help="NYUv2 folder (preset paper)")
    ap.add_argument("--steps", type=int, default=None, help="baseline / retraining steps")
    ap.add_argument("--targets", type=float, nargs="+", default=None, help="fractions of backbone filters removed")
    ap.add_argument("--criteria", nargs="+", default=None)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--prune-amount", type=int, default=None)
    ap.add_argument("--prune-every", type=int, default=None)
    ap.add_argument("--ft-steps", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    cfg = make_config(args.preset, data_root=args.data_root, train_steps=args.steps, levels=args.targets,
                      criteria=args.criteria, n_train=args.n_train, n_test=args.n_test, image_size=args.size,
                      prune_amount=args.prune_amount, prune_every=args.prune_every, level_ft_steps=args.ft_steps,
                      device=args.device)
    study = Study(cfg, args.out, progress=not args.quiet)
    res = study.run(["train", "prune", "retrain"])
    res = write_all(res, args.out)
    f = res["findings"]
    print("findings: criteria alike: {}, extreme iterative pruning drops every task: {}, reinit better at the "
          "extreme: {}".format((f.get("f1") or {}).get("supported"), f["f2"]["supported"], f["f3"]["supported"]))
    print(f"report: {args.out}/report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
