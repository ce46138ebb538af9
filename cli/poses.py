"""`launch.py poses list|extract`: pose templates for the OpenPose ControlNet."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("poses", help="list pose templates, or make one from a photo")
    psub = p.add_subparsers(dest="poses_command", metavar="ACTION", required=True, parser_class=type(p))
    lp = psub.add_parser("list", help="every pose template (built-in and your own)")
    lp.set_defaults(func=cmd_list)
    ep = psub.add_parser("extract", help="detect the pose in a photo and save it as a template")
    ep.add_argument("photo")
    ep.add_argument("--name", required=True, help="template name (letters, digits, '.', '_', '-')")
    ep.set_defaults(func=cmd_extract)


def cmd_list(args, settings) -> int:
    from pipelines.pose.templates import list_templates, user_poses_dir

    templates = list_templates(user_poses_dir(settings))
    width = max(len(t.name) for t in templates)
    for t in templates:
        print(f"{t.name.ljust(width)}  {t.title}  (aspect {t.aspect:g})")
    print(f"{len(templates)} templates")
    return 0


def cmd_extract(args, settings) -> int:
    from pipelines.paths import check_name
    from pipelines.pose.extract import extract_pose
    from pipelines.pose.templates import save_template
    from pipelines.stores import open_store

    check_name(args.name, "--name")
    template = extract_pose(args.photo, open_store(settings), name=args.name)
    print(save_template(template, args.name, settings=settings))
    return 0
