"""Views that send the user-service's commands and queries, directly or after a commit.

A natsbus error a view raises becomes a JSON problem with its HTTP status
(``natsbus.contrib.django.ErrorResponseMiddleware`` in settings); so does
bad input, raised here as ``InvalidRequestError`` (400).
"""

import json
from typing import Any, Dict, Tuple

import attrs
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from natsbus import InvalidRequestError
from natsbus.contrib.django import execute_on_commit, get_command_bus, get_query_bus
from natsbus.demo import CreateUserCommand, GetUserQuery, UserCreated

from .models import Signup


def _json_object(request: HttpRequest) -> Dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        raise InvalidRequestError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("expected a JSON object with a name and an email")
    return data


def _user_fields(data: Dict[str, Any]) -> Tuple[str, str]:
    """``name`` and ``email``; InvalidRequestError (a 400 problem) if they are not there."""
    name = data["name"].strip() if isinstance(data.get("name"), str) else ""
    email = data["email"].strip() if isinstance(data.get("email"), str) else ""
    problems = []
    if not name:
        problems.append("name must be a non-empty string")
    if "@" not in email:
        problems.append("email must be an email address")
    if problems:
        raise InvalidRequestError("; ".join(problems))
    return name, email


@require_POST
def create_user(request: HttpRequest) -> HttpResponse:
    """Execute CreateUserCommand now; 201 with the new user's id."""
    name, email = _user_fields(_json_object(request))
    created = get_command_bus().execute(CreateUserCommand(name=name, email=email))
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
    data = _json_object(request)
    name, email = _user_fields(data)
    try:
        with transaction.atomic():
            signup = Signup.objects.create(name=name, email=email)

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
