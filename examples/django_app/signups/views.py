"""Views that send the user-service's commands and queries, directly or after a commit."""

import json
from typing import Any, Dict

import attrs
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from natsbus.contrib.django import execute_on_commit, get_command_bus, get_query_bus
from natsbus.demo import CreateUserCommand, GetUserQuery, UserCreated

from .models import Signup


def _body(request: HttpRequest) -> Dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@require_POST
def create_user(request: HttpRequest) -> HttpResponse:
    """Execute CreateUserCommand now; 201 with the new user's id."""
    data = _body(request)
    created = get_command_bus().execute(CreateUserCommand(name=data.get("name", ""), email=data.get("email", "")))
    return JsonResponse({"user_id": created.user_id, "created_at": created.created_at}, status=201)


@require_GET
def get_user(request: HttpRequest, user_id: str) -> HttpResponse:
    """Ask GetUserQuery; 404 when the user-service does not know the id."""
    return JsonResponse(attrs.asdict(get_query_bus().ask(GetUserQuery(user_id=user_id))))


class _RolledBack(Exception):
    pass


@require_POST
def create_signup(request: HttpRequest) -> HttpResponse:
    """Save a Signup and create its user only once the save commits.

    With ``"rollback": true`` in the body the transaction rolls back after
    the command was scheduled, so the command is never sent.
    """
    data = _body(request)
    try:
        with transaction.atomic():
            signup = Signup.objects.create(name=data.get("name", ""), email=data.get("email", ""))

            def link(created: UserCreated) -> None:
                Signup.objects.filter(pk=signup.pk).update(user_id=created.user_id)

            execute_on_commit(CreateUserCommand(name=signup.name, email=signup.email), on_result=link)
            if data.get("rollback"):
                raise _RolledBack()
    except _RolledBack:
        return JsonResponse({"rolled_back": True})
    # The commit ran the command (in this thread) and link() stored the user id.
    signup.refresh_from_db()
    return JsonResponse({"id": signup.pk, "user_id": signup.user_id}, status=201)


@require_GET
def get_signup(request: HttpRequest, pk: int) -> HttpResponse:
    signup = Signup.objects.filter(pk=pk).first()
    if signup is None:
        return JsonResponse({"error": f"no signup {pk}"}, status=404)
    return JsonResponse({"id": signup.pk, "name": signup.name, "email": signup.email, "user_id": signup.user_id})
